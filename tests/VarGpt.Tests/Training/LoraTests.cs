using TorchSharp;
using TorchSharp.Modules;
using VarGpt.Checkpoint;
using VarGpt.Training;
using static TorchSharp.torch;

namespace VarGpt.Tests.Training;

[Collection(nameof(GlobalRngCollection))]
public class LoraTests
{
    sealed class Attn : nn.Module<Tensor, Tensor>
    {
        public readonly nn.Module<Tensor, Tensor> q_proj = nn.Linear(8, 8), v_proj = nn.Linear(8, 8, hasBias: false), o_proj = nn.Linear(8, 8);
        public Attn() : base("Attn") => RegisterComponents();
        public override Tensor forward(Tensor x) => o_proj.forward(q_proj.forward(x) * v_proj.forward(x).tanh());
    }

    sealed class Block : nn.Module<Tensor, Tensor>
    {
        public readonly Attn self_attn = new();
        public readonly LayerNorm norm = nn.LayerNorm(8);
        public readonly Sequential mlp = nn.Sequential(("0", nn.Linear(8, 16)), ("1", nn.GELU()), ("2", nn.Linear(16, 8)));
        public Block() : base("Block") => RegisterComponents();
        public override Tensor forward(Tensor x) { var h = x + self_attn.forward(norm.forward(x)); return h + mlp.forward(h); }
    }

    sealed class Toy : nn.Module<Tensor, Tensor>
    {
        public readonly ModuleList<Block> layers = new(new Block(), new Block());
        public readonly ModuleList<nn.Module<Tensor, Tensor>> heads = new(nn.Linear(8, 8));
        public readonly nn.Module<Tensor, Tensor> lm_head = nn.Linear(8, 3, hasBias: false);
        public Toy(int seed) : base("Toy") { torch.manual_seed(seed); RegisterComponents(); }
        public override Tensor forward(Tensor x)
        {
            foreach (var b in layers) x = b.forward(x);
            return lm_head.forward(heads[0].forward(x));
        }
    }

    sealed class Sealed : nn.Module<Tensor, Tensor>
    {
        public readonly Linear q_proj = nn.Linear(4, 4);
        public Sealed() : base("Sealed") => RegisterComponents();
        public override Tensor forward(Tensor x) => q_proj.forward(x);
    }

    static List<string> Keys(nn.Module m) => m.state_dict().Keys.ToList();

    [Fact]
    public void Targets_follow_peft_suffix_matching_and_all_excludes_lm_head()
    {
        TorchTestSetup.Init();
        using var m = new Toy(1);
        Assert.Equal(["layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj", "layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"],
            Lora.FindTargets(m, ["q_proj", "v_proj"]));
        var all = Lora.FindTargets(m, ["all"]);
        Assert.Equal(11, all.Count); // 2 blocks x (3 attn + 2 mlp) + heads.0
        Assert.DoesNotContain("lm_head", all);
        Assert.Contains("layers.1.mlp.2", all);
        Assert.Contains("mlp.0", Lora.FindTargets(m, ["mlp.0"]).Select(n => n[(n.IndexOf("mlp"))..]));
        var ex = Assert.Throws<ArgumentException>(() => Lora.FindTargets(m, ["q_proj", "k_proj"]));
        Assert.Contains("'k_proj'", ex.Message);
    }

    [Fact]
    public void Wrapped_model_starts_equal_computes_the_lora_formula_and_trains_only_adapters()
    {
        TorchTestSetup.Init();
        using var m = new Toy(1);
        using var x = torch.randn(5, 8);
        using var y0 = m.forward(x).detach();
        var original = Keys(m);
        var wrapped = Lora.Apply(m, new LoraOptions { Rank = 2, Alpha = 6, Targets = ["all"], AlsoTrainable = ["heads"] });
        Assert.Equal(11, wrapped.Count);
        var keys = Keys(m);
        Assert.Contains("layers.0.self_attn.q_proj.base_layer.weight", keys);
        Assert.Contains("layers.0.self_attn.q_proj.lora_A.weight", keys);
        Assert.Contains("layers.1.mlp.2.lora_B.weight", keys);
        Assert.Contains("heads.0.lora_A.weight", keys);
        using (var y1 = m.forward(x)) Assert.True(y0.equal(y1).all().item<bool>(), "B = 0 must leave the output unchanged");
        // trainable: adapters + the AlsoTrainable substring ("heads" keeps heads.0.base_layer.* trainable too)
        var trainable = m.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Assert.All(trainable, n => Assert.True(Lora.IsAdapterParam(n) || n.StartsWith("heads."), n));
        Assert.Contains("heads.0.base_layer.weight", trainable);
        Assert.DoesNotContain("lm_head.weight", trainable);
        Assert.DoesNotContain("layers.0.norm.weight", trainable);

        // forward = base + (x A^T B^T) * alpha / r
        var (_, q) = Lora.Layers(m).First(l => l.Name == "layers.0.self_attn.q_proj");
        using (torch.no_grad()) q.lora_B.weight!.normal_();
        using var xin = torch.randn(3, 8);
        using var expected = q.base_layer.forward(xin) + xin.matmul(q.lora_A.weight!.t()).matmul(q.lora_B.weight!.t()) * (6.0 / 2);
        using var got = q.forward(xin);
        Assert.True(got.allclose(expected, rtol: 1e-5, atol: 1e-6));
        Assert.Equal(3.0, q.Scaling);
        // A is kaiming-uniform(a=sqrt 5): bound = 1/sqrt(fan_in)
        Assert.True(q.lora_A.weight!.abs().max().item<float>() <= 1 / Math.Sqrt(8) + 1e-6);
        Assert.False(original.SequenceEqual(keys));
    }

    [Fact]
    public void Trained_adapters_merge_into_the_original_keys_and_outputs()
    {
        TorchTestSetup.Init();
        using var m = new Toy(2);
        var original = Keys(m);
        var shapes = m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.shape);
        using var lmHeadBefore = ((Linear)m.lm_head).weight!.detach().clone();
        var opts = new LoraOptions { Rank = 4, Alpha = 8, Dropout = 0.1, Targets = ["q_proj", "v_proj", "mlp.0", "heads.0"], AlsoTrainable = [] };
        Lora.Apply(m, opts);

        // a few steps through the trainer (adapters only)
        using var dir = TestPaths.Temp();
        var data = Enumerable.Range(0, 8).Select(i => i).ToList();
        using var xs = torch.randn(8, 8);
        using var ys = torch.randn(8, 3);
        var objective = new Objective(m, xs, ys);
        using (var t = new Trainer<IReadOnlyList<int>>(m, objective, new ShuffledBatches<int>(data, 4, 1),
            new TrainerOptions { OutputDir = dir.Path, LearningRate = 5e-2, MaxSteps = 4, LoggingSteps = 10, SaveSteps = 100, Output = TextWriter.Null, IsTerminal = false,
                ExportWeights = () => Lora.MergedStateDict(m) }))
        {
            Assert.All(t.TrainableNames, n => Assert.True(Lora.IsAdapterParam(n), n));
            t.Train(cancel: TestContext.Current.CancellationToken);
            t.ExportWeights(dir.Path);
        }
        // every adapter (fields, ModuleList element, Sequential entry) received gradients: the swapped layers are the ones forward runs
        Assert.Equal(7, Lora.Layers(m).Count);
        Assert.All(Lora.Layers(m), l => Assert.True(l.Layer.lora_B.weight!.abs().sum().item<float>() > 0, l.Name));

        m.eval();
        using var x = torch.randn(6, 8);
        using var yLora = m.forward(x).detach();
        var mergedView = Lora.MergedStateDict(m).ToDictionary(kv => kv.Key, kv => kv.Value);
        Assert.Equal(original, mergedView.Keys.ToList());
        using (var f = SafeTensorsFile.Open(Path.Combine(dir.Path, "model.safetensors")))
            Assert.Equal(original.Order(), f.Tensors.Keys.Order());

        var adapterDir = Path.Combine(dir.Path, "adapter");
        var extra = Lora.SaveAdapter(adapterDir, m, opts, "base/model");
        Assert.Empty(extra);

        Lora.Merge(m);
        Assert.Equal(original, Keys(m));                       // same keys, same order
        Assert.All(m.state_dict(), kv => Assert.Equal(shapes[kv.Key], kv.Value.shape));
        Assert.Empty(Lora.Layers(m));
        Assert.IsType<Linear>(m.layers[0].self_attn.q_proj);
        using var yMerged = m.forward(x);
        Assert.True(yMerged.allclose(yLora, rtol: 1e-4, atol: 1e-5), "merged output differs from the adapter output");
        foreach (var (k, v) in m.state_dict()) Assert.True(v.equal(mergedView[k]).all().item<bool>(), $"{k}: merged view != merged model");
        Assert.True(((Linear)m.lm_head).weight!.equal(lmHeadBefore).all().item<bool>());

        using (var f = SafeTensorsFile.Open(Path.Combine(adapterDir, "adapter_model.safetensors")))
        {
            Assert.Contains("base_model.model.layers.0.self_attn.q_proj.lora_A.weight", f.Tensors.Keys);
            Assert.Contains("base_model.model.layers.1.mlp.0.lora_B.weight", f.Tensors.Keys);
            Assert.Contains("base_model.model.heads.0.lora_A.weight", f.Tensors.Keys);
            Assert.Equal(14, f.Tensors.Count);  // 7 layers x (A, B)
            Assert.Equal([4L, 8L], f.Tensors["base_model.model.layers.0.self_attn.q_proj.lora_A.weight"].Shape);
        }
        var cfg = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(adapterDir, "adapter_config.json"))).RootElement;
        Assert.Equal(4, cfg.GetProperty("r").GetInt32());
        Assert.Equal(8, cfg.GetProperty("lora_alpha").GetDouble());
        Assert.Equal("LORA", cfg.GetProperty("peft_type").GetString());
    }

    sealed class Objective(Toy m, Tensor xs, Tensor ys) : ITrainingObjective<IReadOnlyList<int>>
    {
        public ObjectiveOutput Compute(IReadOnlyList<int> batch)
        {
            using var idx = torch.tensor(batch.Select(i => (long)i).ToArray());
            return new ObjectiveOutput(nn.functional.mse_loss(m.forward(xs.index_select(0, idx)), ys.index_select(0, idx)), batch.Count);
        }
    }

    [Fact]
    public void Official_quirk_keeps_generation_parts_trainable_and_adapter_export_reports_them()
    {
        TorchTestSetup.Init();
        using var m = new Toy(3);
        var opts = new LoraOptions { Rank = 2, Targets = ["q_proj"], AlsoTrainable = ["layers.1.mlp"] };
        Lora.Apply(m, opts, frozen: n => n.StartsWith("layers.1.mlp.2"));
        using var dir = TestPaths.Temp();
        var extra = Lora.SaveAdapter(dir.Path, m, opts);
        Assert.Equal(["layers.1.mlp.0.weight", "layers.1.mlp.0.bias"], extra);  // explicit freeze wins for mlp.2
    }

    [Fact]
    public void A_field_typed_Linear_cannot_be_wrapped_and_the_error_says_why()
    {
        TorchTestSetup.Init();
        using var m = new Sealed();
        var ex = Assert.Throws<NotSupportedException>(() => Lora.Apply(m, new LoraOptions { Targets = ["q_proj"] }));
        Assert.Contains("Sealed.q_proj is typed Linear", ex.Message);
    }
}
