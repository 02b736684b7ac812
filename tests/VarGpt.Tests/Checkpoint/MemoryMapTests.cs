using System.Security.Cryptography;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Torch;
using TorchSharp;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Inference;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.Checkpoint;

/// <summary>StateDictOptions.MemoryMap / VargptModelOptions.MemoryMap: zero-copy views of a private file mapping.</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class MemoryMapTests
{
    static VargptForConditionalGeneration Build(string dir, Device device)
    {
        var cfg = VargptConfig.Load(dir);
        using (TorchDefaults.Scope(device, ScalarType.Float32))
            return new VargptForConditionalGeneration(cfg, device, ScalarType.Float32);
    }

    /// <summary>Bitwise equality (same dtype, shape and bytes).</summary>
    static bool Same(Tensor a, Tensor b)
    {
        if (a.dtype != b.dtype || !a.shape.SequenceEqual(b.shape)) return false;
        using var ca = a.contiguous();
        using var cb = b.contiguous();
        return ca.bytes.SequenceEqual(cb.bytes);
    }

    /// <summary>A private copy of the tiny image model in <paramref name="dir"/>; returns its model.safetensors.</summary>
    static string CopyOfTinyModel(string dir)
    {
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.EnumerateFiles(TinyImageModel.Folder())) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        return Path.Combine(dir, CheckpointReader.SingleFileName);
    }

    static string Sha(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    [Fact]
    public void Mapped_load_is_bit_identical_to_a_copying_load_and_gives_the_same_logits()
    {
        TorchTestSetup.Init();
        var dir = TinyImageModel.Folder();
        using var copied = Build(dir, CPU);
        var r1 = StateDict.Load(copied, dir);
        Assert.Empty(r1.Mapped);
        using var mapped = Build(dir, META);
        var r2 = StateDict.Load(mapped, dir, new StateDictOptions { MemoryMap = true });
        // every float32 tensor is stored in the module's dtype at a 4-aligned offset: all of them are views
        var floats = copied.state_dict().Where(kv => kv.Value.is_floating_point()).Select(kv => kv.Key).Order().ToList();
        Assert.NotEmpty(floats);
        Assert.Equal(floats, r2.Mapped.Intersect(floats).Order().ToList());
        var a = copied.state_dict();
        var b = mapped.state_dict();
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        foreach (var (k, t) in a)
        {
            Assert.Equal(DeviceType.CPU, b[k].device_type);
            Assert.True(t.dtype == b[k].dtype && Same(t, b[k]), $"{k} differs");
        }
        Assert.Equal(mapped.named_parameters().Select(p => (p.name, p.parameter.requires_grad)), copied.named_parameters().Select(p => (p.name, p.parameter.requires_grad)));
        using var ids = tensor(new long[] { 1, 5, 9, 13, 2 }).unsqueeze(0);
        using (no_grad())
        {
            var o1 = copied.Forward(copied.EmbedInputs(ids));
            var o2 = mapped.Forward(mapped.EmbedInputs(ids));
            Assert.True(Same(o1.Logits, o2.Logits));
        }
    }

    [Fact]
    public void Writing_into_a_mapped_parameter_never_reaches_the_file_and_the_file_stays_deletable()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var file = CopyOfTinyModel(d["m"]);
        var before = Sha(file);
        using var model = Build(d["m"], META);
        var r = StateDict.Load(model, d["m"], new StateDictOptions { MemoryMap = true });
        Assert.Contains("lm_head.weight", r.Mapped);
        var w = ((TorchSharp.Modules.Linear)model.lm_head).weight!;
        using var original = w.clone();
        // a training-style in-place update (optimizer step) on the mapped weight
        using (no_grad()) w.add_(1.0f);
        using (var expected = original + 1.0f) Assert.True(Same(w, expected));
        Assert.Equal(before, Sha(file));
        using (var reader = CheckpointReader.Open(d["m"]))
        using (var fromFile = reader.Load("lm_head.weight"))
            Assert.True(Same(fromFile, original));
        // gradients flow into mapped parameters like into any other
        using (var x = randn(3, w.shape[1]))
        using (var loss = nn.functional.linear(x, w).sum())
            loss.backward();
        Assert.NotNull(w.grad);
        // Linux: the file can be deleted while mapped; the pages stay readable through the mapping
        File.Delete(file);
        Assert.False(File.Exists(file));
        using var emb = model.model.embed_tokens.weight.sum();
        Assert.True(float.IsFinite(emb.item<float>()));
    }

    [Fact]
    public void Misaligned_and_converted_tensors_are_copied_and_meta_leftovers_are_reported()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var file = d["t.safetensors"];
        using (var w = randn(4, 3))
        using (var i = tensor(new long[] { 7, 8 }))
            SafeTensorsWriter.Save(file, [new("weight", w), new("i", i)]);
        using (var reader = CheckpointReader.Open(file))
        {
            using var view = reader.MapView("weight");
            Assert.NotNull(view);
            using var copy = reader.Load("weight");
            Assert.True(Same(view!, copy));
        }
        // rewrite with a header whose length is not a multiple of 4: same tensors, unaligned data start
        var bytes = File.ReadAllBytes(file);
        long n = BitConverter.ToInt64(bytes, 0);
        var header = System.Text.Encoding.UTF8.GetString(bytes, 8, (int)n).TrimEnd(' ') + " ";
        if ((8 + System.Text.Encoding.UTF8.GetByteCount(header)) % 4 == 0) header += " ";
        var hb = System.Text.Encoding.UTF8.GetBytes(header);
        var odd = d["odd.safetensors"];
        File.WriteAllBytes(odd, [.. BitConverter.GetBytes((long)hb.Length), .. hb, .. bytes.AsSpan(8 + (int)n).ToArray()]);
        using (var reader = CheckpointReader.Open(odd))
        {
            Assert.Null(reader.MapView("weight"));
            var lin = nn.Linear(3, 4, hasBias: false, device: META);
            // lin has 'weight' only; the source also has "i": allowed
            var r = StateDict.Load(lin, reader, new StateDictOptions { MemoryMap = true, AllowUnexpected = ["i"] });
            Assert.Empty(r.Mapped);
            Assert.Equal(DeviceType.CPU, lin.weight!.device_type);
            using var expect = reader.Load("weight");
            Assert.True(Same(lin.weight, expect));
        }
        using (var reader = CheckpointReader.Open(file))
        {
            // a dtype conversion (float32 stored, bfloat16 module) is read, not mapped
            var lin = nn.Linear(3, 4, hasBias: false, device: META, dtype: ScalarType.BFloat16);
            var r = StateDict.Load(lin, reader, new StateDictOptions { MemoryMap = true, AllowUnexpected = ["i"] });
            Assert.Empty(r.Mapped);
            Assert.Equal((DeviceType.CPU, ScalarType.BFloat16), (lin.weight!.device_type, lin.weight.dtype));
            // a META parameter the checkpoint does not have cannot be used: the load says which
            var withBias = nn.Linear(3, 4, hasBias: true, device: META);
            var e = Assert.Throws<InvalidOperationException>(() => StateDict.Load(withBias, reader,
                new StateDictOptions { MemoryMap = true, AllowUnexpected = ["i"], AllowMissing = ["bias"] }));
            Assert.Contains("bias", e.Message);
        }
    }

    [Fact]
    public void Pipeline_memory_mapped_by_default_on_cpu_matches_a_copying_load()
    {
        TorchTestSetup.Init();
        var dir = TinyImageModel.Folder();
        Assert.True(new VargptModelOptions().UseMemoryMap);
        using var a = VargptModel.Load(dir);
        using var b = VargptModel.Load(dir, new VargptModelOptions { MemoryMap = false });
        using var pa = a.Prepare([new VarGpt.Text.ChatMessage("user", [VarGpt.Text.ContentPart.FromText("a red circle")])], []);
        using var pb = b.Prepare([new VarGpt.Text.ChatMessage("user", [VarGpt.Text.ContentPart.FromText("a red circle")])], []);
        var g = a.DefaultTextGeneration(6);
        var oa = Turn(a, pa, g);
        var ob = Turn(b, pb, g);
        Assert.Equal(ob.Ids, oa.Ids);
        Assert.Equal(ob.Stop, oa.Stop);
    }

    /// <summary>One seeded turn of the official loop (the image, if the model starts one, is drawn with seed 3).</summary>
    static (IReadOnlyList<int> Ids, VarGpt.LanguageModel.StopReason Stop) Turn(VargptModel m, PreparedPrompt prompt, VarGpt.Configuration.GenerationConfig g)
    {
        using var turn = m.StartTurn([prompt], new TurnOptions { Generation = g, Seed = 1 });
        foreach (var _ in turn.Run(TestContext.Current.CancellationToken)) { }
        if (turn.ImageReady) turn.DrawImage(new VarGpt.Model.ImageOptions(), 3, cancellationToken: TestContext.Current.CancellationToken);
        return (turn.Rows[0].TokenIds, turn.StopReason);
    }

    [Fact]
    public void A_loaded_model_survives_its_weight_file_being_truncated_in_place_and_answers_the_same()
    {
        // the model, not the reader it loaded through, keeps the guard of its mapped file (MappedFileLease)
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var file = CopyOfTinyModel(d["m"]);
        using var model = VargptModel.Load(d["m"], new VargptModelOptions { MemoryMap = true });
        using var ids = tensor(new long[] { 1, 5, 9, 13, 2 }).unsqueeze(0);
        Tensor Logits()
        {
            using var _ = no_grad();
            return model.Module.Forward(model.Module.EmbedInputs(ids)).Logits.DetachFromDisposeScope();
        }
        using var before = Logits();

        Assert.Equal(0, VarGpt.Tests.Reliability.FaultFolder.Exec(30_000, "sh", "-c", $": > '{file}'"));   // another process, in place
        Assert.Equal(0, new FileInfo(file).Length);

        using var after = Logits();
        Assert.True(Same(before, after));
    }
}
