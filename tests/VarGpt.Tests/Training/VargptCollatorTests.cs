using System.Text.Json.Nodes;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Training;
using VarGpt.Training.Data;
using static TorchSharp.torch;
using VarGpt.Configuration;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.Training;

public class VargptCollatorTests(ITestOutputHelper output)
{
    [Fact]
    public void Mixed_batch_collates_like_the_official_collator()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var records = TinyVargpt.MixedRecords(tmp.Path);
        var cfg = TinyVargpt.Config();
        var collator = TinyVargpt.Collator(cfg);
        Assert.Equal(24, collator.ImageGenTokenCount); // 21 VAR tokens padded to a multiple of 8
        var ds = collator.EncodeAll(records, TrainingStage.Sft);
        using var b = collator.Collate(ds.Items, 0, 0);
        int B = 4;
        Assert.Equal(B, (int)b.InputIds.shape[0]);
        long T = b.InputIds.shape[1];
        Assert.Equal(0, T % 8);
        Assert.Equal(ds.Items.Max(i => i.Length), b.AttentionMask.sum(1).max().item<long>());
        // labels: -100 on the prompt and padding, the answer tokens (ending with <|im_end|>) otherwise
        var tok = TinyVargpt.Tokenizer;
        var ids = b.InputIds.data<long>().ToArray();
        var labels = b.Labels.data<long>().ToArray();
        for (int r = 0; r < B; r++)
        {
            var row = ids.Skip(r * (int)T).Take((int)T).ToArray();
            var lab = labels.Skip(r * (int)T).Take((int)T).ToArray();
            int len = ds.Items[r].Length;
            var answer = Enumerable.Range(0, len).Where(t => lab[t] != -100).ToList();
            Assert.NotEmpty(answer);
            Assert.All(answer, t => Assert.Equal(row[t], lab[t]));
            Assert.Equal(tok.TokenToId(SpecialTokens.ImEnd), lab[len - 1]);
            Assert.All(Enumerable.Range(len, (int)T - len), t => { Assert.Equal(tok.PadTokenId!.Value, row[t]); Assert.Equal(-100, lab[t]); });
            // the answer starts right after "<|im_start|>assistant\n"
            var prefix = tok.Decode(row.Take(answer[0]).Select(x => (int)x), skipSpecialTokens: false);
            Assert.EndsWith("<|im_start|>assistant\n", prefix);
        }
        // generation rows: start + 24 pads + end; understanding rows: grid/4 image pads
        Assert.Equal(2 * 24, ids.Count(x => x == cfg.ImageGen.PadId));
        Assert.NotNull(b.PixelGenValues);
        Assert.Equal([2L, 3, 64, 64], b.PixelGenValues!.shape);
        Assert.InRange(b.PixelGenValues.min().item<float>(), -1f, 1f);
        Assert.NotNull(b.ImageGridThw);
        Assert.Equal([2L, 3], b.ImageGridThw!.shape); // green.png for the understanding and the editing row
        long imagePads = ids.Count(x => x == cfg.ImageTokenId);
        Assert.Equal(b.ImageGridThw.prod(1).sum().item<long>() / 4, imagePads);
        Assert.Equal(b.ImageGridThw.prod(1).sum().item<long>(), b.PixelValues!.shape[0]);
        // the two-colour target: red left, blue right after resize(72) + crop(64) — left column red, right column blue
        var px = b.PixelGenValues[0];
        output.WriteLine($"target 0: R(32,0)={px[0, 32, 0].item<float>()} B(32,0)={px[2, 32, 0].item<float>()} R(32,63)={px[0, 32, 63].item<float>()} B(32,63)={px[2, 32, 63].item<float>()}");
        Assert.True(px[0, 32, 0].item<float>() > 0.5 && px[2, 32, 63].item<float>() > 0.5);
        // crops depend on (seed, epoch, index) only
        using var again = collator.Collate(ds.Items, 0, 0);
        Assert.True(again.PixelGenValues!.equal(b.PixelGenValues).all().item<bool>());
        using var other = collator.Collate(ds.Items, 1, 0);
        Assert.Equal(b.InputIds.data<long>().ToArray(), other.InputIds.data<long>().ToArray());
    }

    [Fact]
    public void Official_demo_data_parses_and_collates_with_the_qwen_tokenizer()
    {
        TorchTestSetup.Init();
        if (!File.Exists(Path.Combine(TestPaths.DemoData, "dataset_info.json"))) Assert.Skip($"official demo data not found at {TestPaths.DemoData}");
        if (!File.Exists(Path.Combine(TestPaths.QwenTokenizer, "tokenizer.json"))) Assert.Skip($"Qwen tokenizer not found at {TestPaths.QwenTokenizer}");
        var tok = QwenTokenizer.FromDirectory(TestPaths.QwenTokenizer);
        int Id(string t) => tok.TokenToId(t);
        // the released token ids and the released Infinity padding (128) / pn 0.25M: 2560 pads per target
        var cfg = new VargptConfig
        {
            VocabSize = 152064, HiddenSize = 3584, NumAttentionHeads = 28, NumKeyValueHeads = 4, PadTokenId = Id(SpecialTokens.EndOfText),
            VisionStartTokenId = Id(SpecialTokens.VisionStart), VisionEndTokenId = Id(SpecialTokens.VisionEnd), ImageTokenId = Id(SpecialTokens.ImagePad),
            ImageGen = new ImageGenTokens(Id(SpecialTokens.ImageGenStart), Id(SpecialTokens.ImageGenEnd), Id(SpecialTokens.ImageGenPad)),
        };
        Assert.Equal(151657, cfg.ImageGen.StartId);
        var sft = DatasetLoader.Load(["train_vargpt_v1_1_demo", "eval_inference_demo_edit"], new DatasetLoadOptions { DatasetDir = TestPaths.DemoData });
        var collator = new VargptCollator(tok, cfg, new VargptCollatorOptions { CutoffLen = 8192 });
        Assert.Equal(2560, collator.ImageGenTokenCount);
        var ds = collator.EncodeAll(sft, TrainingStage.Sft);
        Assert.Equal(sft.Count, ds.Items.Count);
        using var b = collator.Collate(ds.Items, 0, 0);
        output.WriteLine($"demo batch: input_ids [{string.Join(",", b.InputIds.shape)}], pixel_gen_values [{string.Join(",", b.PixelGenValues!.shape)}], " +
            $"pixel_values [{string.Join(",", b.PixelValues!.shape)}], grids {string.Join(" ", b.ImageGridThw!.data<long>().Chunk(3).Select(g => $"({string.Join(",", g)})"))}");
        Assert.Equal([3L, 3, 512, 512], b.PixelGenValues.shape);
        Assert.Equal(3 * 2560, b.InputIds.eq(151659).sum().item<long>());
        Assert.Equal(3, b.InputIds.eq(151657).sum().item<long>());
        Assert.Equal(b.ImageGridThw.prod(1).sum().item<long>() / 4, b.InputIds.eq(151655).sum().item<long>());
        var text = tok.Decode(ds.Items[0].Chosen.InputIds.Where(t => t != 151659), skipSpecialTokens: false);
        Assert.Equal("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nI need a designed image of an old building with two windows and some plants.<|im_end|>\n<|im_start|>assistant\nI have designed a drawing of an old building with two windows and some plants.<|image_gen_start|><|image_gen_end|><|im_end|>", text);
    }

    [Fact]
    public void Empty_dataset_is_a_clear_error()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        TinyVargpt.WriteDataset(tmp.Path, new JsonArray());
        var records = DatasetLoader.Load(["tiny"], new DatasetLoadOptions { DatasetDir = tmp.Path });
        var ex = Assert.Throws<InvalidFileException>(() => TinyVargpt.Collator(TinyVargpt.Config()).EncodeAll(records, TrainingStage.Sft));
        Assert.Contains("the dataset is empty", ex.Message);
    }

    [Fact]
    public void Samples_longer_than_cutoff_are_skipped_and_counted()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var records = TinyVargpt.MixedRecords(tmp.Path);
        var cfg = TinyVargpt.Config();
        var lengths = TinyVargpt.Collator(cfg).EncodeAll(records, TrainingStage.Sft).Items.Select(i => i.Length).ToList();
        int cutoff = lengths.Order().ElementAt(2) - 1; // the two longest exceed it
        var ds = TinyVargpt.Collator(cfg, cutoff).EncodeAll(records, TrainingStage.Sft);
        Assert.Equal(2, ds.Items.Count);
        Assert.Equal(2, ds.Skipped.Count);
        var summary = ds.SkippedSummary();
        Assert.Contains($"2 of 4 sample(s) are longer than cutoff_len {cutoff} and were skipped", summary);
        Assert.Contains("tiny.json: record", summary);
        var ex = Assert.Throws<InvalidFileException>(() => TinyVargpt.Collator(cfg, 10).EncodeAll(records, TrainingStage.Sft));
        Assert.Contains("no sample fits cutoff_len 10", ex.Message);
        Assert.Contains("raise cutoff_len", ex.Message);
    }

    [Theory]
    [InlineData("<image>what is <|image_pad|> this?", "It is green.", "<|image_pad|>")]
    [InlineData("draw <|image_gen_pad|>", "Here is a red square.<image_gen>", "<|image_gen_pad|>")]
    public void Image_token_mismatch_names_the_record(string user, string answer, string token)
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        TinyVargpt.WriteImage(tmp.Path, "img.png", 64, 64, (1, 2, 3));
        TinyVargpt.WriteDataset(tmp.Path, new JsonArray(TinyVargpt.Sft(user, answer, "img.png")));
        var records = DatasetLoader.Load(["tiny"], new DatasetLoadOptions { DatasetDir = tmp.Path });
        var ex = Assert.Throws<InvalidFileException>(() => TinyVargpt.Collator(TinyVargpt.Config()).EncodeAll(records, TrainingStage.Sft));
        Assert.Contains("tiny.json: record 0: image-token mismatch", ex.Message);
        Assert.Contains(token, ex.Message);
    }

    [Fact]
    public void Target_resolution_without_a_schedule_is_a_clear_error()
    {
        TorchTestSetup.Init();
        var cfg = TinyVargpt.Config();
        var ex = Assert.Throws<InvalidOptionException>(() => new VargptCollator(TinyVargpt.Tokenizer, cfg, new VargptCollatorOptions { ImageGenResolution = 100 }));
        Assert.Contains("image_gen_resolution 100: target images are 100x100 pixels but no scale schedule of template 1 has that size", ex.Message);
        Assert.Contains("0.25M = 512x512", ex.Message);
        Assert.Contains("t64 = 64x64", ex.Message);

        // the forward refuses targets of a size no schedule has, and a pad count that does not match the schedule
        using var model = TinyVargpt.Model(cfg, 1);
        using var ids = tensor(new long[] { 1, 2, cfg.ImageGen.StartId, cfg.ImageGen.PadId, cfg.ImageGen.EndId }).unsqueeze(0);
        using var pix = zeros(1, 3, 48, 48);
        var e2 = Assert.Throws<InvalidOptionException>(() => VargptTraining.Forward(model, new VargptTrainingInputs(ids, PixelGenValues: pix)));
        Assert.Contains("target images are 48x48 pixels but no scale schedule of template 1 has that size", e2.Message);
        using var pix64 = zeros(1, 3, 64, 64);
        var e3 = Assert.Throws<ArgumentException>(() => VargptTraining.Forward(model, new VargptTrainingInputs(ids, PixelGenValues: pix64)));
        Assert.Contains("Gen Image features and image tokens do not match: tokens: 1", e3.Message);
        Assert.Contains("exactly 24 pad tokens", e3.Message);
    }
}
