using System.CommandLine;
using VarGpt.Cli.Commands;
using VarGpt.Cli.Runner;

namespace VarGpt.Cli;

/// <summary>Composes the vargpt commands; each command lives in Commands/&lt;Name&gt;Command.cs.</summary>
public static class Program
{
    public static RootCommand BuildRoot()
    {
        var root = new RootCommand(
            """
            VarGpt.NET: a C#/TorchSharp port of VARGPT-v1.1 (Qwen2-VL understanding + Infinity next-scale image
            generation). Point it at a Hugging Face checkpoint folder (config.json + safetensors files).
            Run 'vargpt COMMAND --help' for a command's options and examples.
            """)
        {
            InfoCommand.Create(),
            InitCommand.Create(),
            ChatCommand.Create(),
            BenchCommand.Create(),
            FixturesCommand.Create(),
            TrainCommand.Create(),
            GenerateCommand.Create(),
            EditCommand.Create(),
            ShapesCommand.Create(),
            ServeCommand.Create(),
            DoctorCommand.Create(),
        };
        root.WithExamples(
            "vargpt info ~/models/VARGPT-v1.1          # what a checkpoint folder holds",
            "vargpt init --preset tiny --out /tmp/tiny # a random test-sized checkpoint",
            "vargpt bench machine                      # memory bandwidth, matmul FLOP/s",
            "vargpt fixtures check ../shared/golden    # numerical checks against the official code",
            "vargpt doctor                             # CPU, libtorch/oneDNN versions, native kernel self-check",
            "vargpt train sft my_sft.yaml               # fine-tune (LLaMA-Factory style yaml)",
            "vargpt shapes data --out data/shapes      # the ShapesWorld toy dataset");
        return root;
    }

    public static int Main(string[] args)
    {
        VarGpt.Torch.TorchRuntime.RequestPassiveThreadWait();   // before libtorch loads (see its doc comment)
        VarGpt.Torch.MallocTuning.KeepFreedMemory();             // before the first tensor (see its doc comment)
        return CliRunner.Run(BuildRoot(), args, Console.Out, Console.Error);
    }
}
