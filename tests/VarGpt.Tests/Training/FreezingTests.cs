using VarGpt.Training;
using TorchSharp;
using static TorchSharp.torch;
using VarGpt.Model;

namespace VarGpt.Tests.Training;

public class FreezingTests
{
    // A representative slice of the official state-dict names (REFERENCE §2.8).
    static readonly string[] Names =
    [
        "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.gate_proj.weight", "model.norm.weight",
        "lm_head.weight",
        "visual.patch_embed.proj.weight", "visual.blocks.0.attn.qkv.weight", "visual.merger.mlp.0.weight",
        "vargpt_gen.cfg_uncond", "vargpt_gen.block_chunks.0.module.0.sa.mat_qkv.weight", "vargpt_gen.head.weight",
        "vae_local.encoder.conv_in.conv.weight", "vae_local.quantizer.lfq.mask",
        "image_gen_projector.mlp.0.weight", "image_gen_projector_out.mlp.2.bias", "sos_embedding.weight",
    ];

    static string[] Train(int stage) => Freezing.Plan(Names, Freezing.ForbiddenModules("qwen2vl-v1.1", stage)).Trainable.ToArray();

    const string Gen = "vargpt_gen.";
    static readonly string[] GenParts = Names.Where(n => n.StartsWith(Gen) || n.StartsWith("image_gen_projector") || n.StartsWith("sos_embedding")).ToArray();
    static readonly string[] Llm = Names.Where(n => n.StartsWith("model.") || n.StartsWith("lm_head.")).ToArray();

    [Fact]
    public void Official_stage_map_for_v1_1()
    {
        Assert.Equal(GenParts, Train(0));
        Assert.Equal(["image_gen_projector.mlp.0.weight", "image_gen_projector_out.mlp.2.bias", "sos_embedding.weight"], Train(1));
        Assert.Equal(Llm, Train(2));
        Assert.Equal(GenParts, Train(3));
        Assert.Equal(Names.Where(n => !n.StartsWith("visual.") && !n.StartsWith("vae_local.")), Train(4));
        Assert.Equal(Names.Where(n => !n.StartsWith("vae_local.")), Train(5));
        for (int s = 0; s <= 5; s++) Assert.DoesNotContain(Train(s), n => n.StartsWith("vae_local."));
    }

    [Fact]
    public void Substring_rule_is_reproduced_as_written()
    {
        // "model" is a substring test, not a prefix: a name merely containing it is frozen in stages 0/1/3.
        Assert.True(Freezing.IsForbidden("vargpt_gen.some_model_thing.weight", Freezing.ForbiddenModules("qwen2vl-v1.1", 3)));
        // "image_gen_projector" also covers image_gen_projector_out in stage 2.
        Assert.True(Freezing.IsForbidden("image_gen_projector_out.mlp.0.weight", ["image_gen_projector"]));
        Assert.Throws<NotSupportedException>(() => Freezing.ForbiddenModules("qwen2vl-v1.0", 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => Freezing.ForbiddenModules("qwen2vl-v1.1", 6));
    }

    [Fact]
    public void Component_groups_freeze_by_prefix_on_top_of_the_stage()
    {
        var plan = Freezing.Plan(Names, Freezing.ForbiddenModules("qwen2vl-v1.1", 5), ["vision_tower", "projectors"]);
        Assert.DoesNotContain(plan.Trainable, n => n.StartsWith("visual.") || n.StartsWith("image_gen_projector"));
        Assert.Contains("sos_embedding.weight", plan.Trainable);
        Assert.Contains("model.layers.0.self_attn.q_proj.weight", plan.Trainable);
        Assert.Equal(Names.Length, plan.Trainable.Count + plan.Frozen.Count);
        Assert.Equal("infinity", ModelComponents.Of("vargpt_gen.head.weight")?.Key);
        Assert.Equal("language_model", ModelComponents.Of("lm_head.weight")?.Key);
        Assert.Null(ModelComponents.Of("something_else"));
        Assert.Throws<ArgumentException>(() => Freezing.Plan(Names, [], ["nose"]));
    }

    sealed class Toy : nn.Module
    {
        public readonly nn.Module<Tensor, Tensor> visual = nn.Linear(2, 2);
        public readonly nn.Module<Tensor, Tensor> lm_head = nn.Linear(2, 2, hasBias: false);
        public Toy() : base("Toy") => RegisterComponents();
    }

    [Fact]
    public void Apply_sets_requires_grad_and_rejects_uncovered_names()
    {
        TorchTestSetup.Init();
        using var m = new Toy();
        var names = m.named_parameters().Select(p => p.name).ToList();
        Freezing.Apply(m, Freezing.Plan(names, ["visual"]));
        Assert.Equal([false, false, true], m.named_parameters().Select(p => p.parameter.requires_grad));
        Assert.Throws<ArgumentException>(() => Freezing.Apply(m, new FreezePlan(["lm_head.weight"], [])));
        Assert.Contains("lm_head", Freezing.Summary(m));
    }
}
