namespace VarGpt;

/// <summary>
/// An error in what the user gave: a folder, a file, a config key, a prompt, an option, a training yaml. The message
/// names the file, key, shape or field and says what to do. The CLI prints it alone and exits 2 (Runner/CliRunner); a
/// server answers 400. Anything else the library throws is a bug: the CLI prints the stack and exits 3.
/// </summary>
public class VargptInputException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A file or folder the user named does not exist.</summary>
public sealed class InputNotFoundException(string message, string? path = null) : VargptInputException(message)
{
    public string? Path { get; } = path;
}

/// <summary>A file or folder the user gave is malformed or does not fit (a config, a checkpoint, a dataset, a yaml, a run folder); the message names the file and the key.</summary>
public sealed class InvalidFileException(string message, Exception? inner = null) : VargptInputException(message, inner);

/// <summary>A setting is out of range, unknown or contradicts another (library options, CLI flags); the message names it and the valid values.</summary>
public sealed class InvalidOptionException(string message, string? option = null) : VargptInputException(message)
{
    /// <summary>The option's name (e.g. "Cfg", "--top-p"), when known.</summary>
    public string? Option { get; } = option;
}
