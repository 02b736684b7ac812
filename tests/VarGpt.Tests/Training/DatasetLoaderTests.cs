using System.Text.Json;
using VarGpt.Training;
using VarGpt.Training.Data;

using VarGpt;

namespace VarGpt.Tests.Training;

public class DatasetLoaderTests
{
    static void RequireDemo()
    {
        if (!File.Exists(Path.Combine(TestPaths.DemoData, "dataset_info.json")))
            Assert.Skip($"official demo data not found at {TestPaths.DemoData}");
    }

    [Fact]
    public void Official_generation_demo_loads_as_generation_records_with_resolved_targets()
    {
        RequireDemo();
        var recs = DatasetLoader.Load(["train_vargpt_v1_1_demo"], new DatasetLoadOptions { DatasetDir = TestPaths.DemoData });
        Assert.Equal(2, recs.Count);
        Assert.All(recs, r => Assert.Equal(RecordKind.Generation, r.Kind));
        Assert.Equal([0, 1], recs.Select(r => r.Index));
        var img = Assert.Single(recs[0].Images);
        Assert.True(img.IsTarget);
        // "data/vargpt_demo/1.jpg" is relative to the official repo root, whose data/ is our dataset_dir.
        Assert.Equal(Path.GetFullPath(Path.Combine(TestPaths.DemoData, "vargpt_demo", "1.jpg")), img.Path);
        Assert.Equal("user", recs[0].Prompt.Single().Role);
        Assert.EndsWith("<image_gen>", recs[0].Response.Single().Content);
        Assert.Equal("", recs[0].System);
    }

    [Fact]
    public void Official_edit_demo_is_editing_with_source_then_target()
    {
        RequireDemo();
        var recs = DatasetLoader.Load(["eval_inference_demo_edit", "eval_inference_demo"], new DatasetLoadOptions { DatasetDir = TestPaths.DemoData });
        Assert.Equal(5, recs.Count);
        var edit = recs[0];
        Assert.Equal(RecordKind.Editing, edit.Kind);
        Assert.Equal(2, edit.Images.Count);
        Assert.False(edit.Images[0].IsTarget);
        Assert.EndsWith("input_edit.jpg", edit.Images[0].Path);
        Assert.True(edit.Images[1].IsTarget);
        Assert.EndsWith("occ_demo.jpg", edit.Images[1].Path);
        Assert.All(recs.Skip(1), r => Assert.Equal(RecordKind.Generation, r.Kind));
        Assert.Equal("eval_inference_demo", recs[4].Dataset);
    }

    /// <summary>Writes a dataset folder with one file per record type plus dataset_info.json.</summary>
    static void WriteSamples(TempDir d, bool withImages = true)
    {
        Directory.CreateDirectory(d["imgs"]);
        if (withImages)
            foreach (var n in new[] { "a.png", "b.png", "c.png", "d.png", "e.png" }) File.WriteAllBytes(Path.Combine(d["imgs"], n), [1, 2, 3]);
        var sharegpt = new { formatting = "sharegpt", columns = new { messages = "messages", images = "images" },
            tags = new { role_tag = "role", content_tag = "content", user_tag = "user", assistant_tag = "assistant" } };
        var info = new Dictionary<string, object>
        {
            ["mixed"] = new { file_name = "mixed.json", sharegpt.formatting, sharegpt.columns, sharegpt.tags },
            ["lines"] = new { file_name = "lines.jsonl", formatting = "sharegpt", columns = new { messages = "conversations", images = "imgs" } },
            ["pref"] = new { file_name = "pref.json", ranking = true, formatting = "sharegpt",
                columns = new { messages = "messages", chosen = "chosen", rejected = "rejected", images = "images" }, sharegpt.tags },
        };
        File.WriteAllText(d["dataset_info.json"], JsonSerializer.Serialize(info));
        object U(string c) => new { role = "user", content = c };
        object A(string c) => new { role = "assistant", content = c };
        var mixed = new object[]
        {
            new { messages = new[] { U("<image>What is this?"), A("A cat.") }, images = new[] { "imgs/a.png" } },             // understanding
            new { messages = new[] { U("Draw a dog."), A("Here it is.<image_gen>") }, images = new[] { "imgs/b.png" } },        // generation
            new { messages = new[] { U("Make <image> snowy"), A("The output image is: <image_gen>") }, images = new[] { "imgs/c.png", "imgs/d.png" } }, // editing
            new { messages = new[] { new { role = "system", content = "Be brief." }, U("Hi"), A("Hello"), U("2+2?"), A("4") } }, // text, multi-turn + system
        };
        File.WriteAllText(d["mixed.json"], JsonSerializer.Serialize(mixed));
        // JSONL with the LLaMA-Factory default tags (from/value, human/gpt) and a single-string images column.
        File.WriteAllText(d["lines.jsonl"],
            JsonSerializer.Serialize(new { conversations = new[] { new { from = "human", value = "Paint a tree" }, new { from = "gpt", value = "<image_gen>" } }, imgs = "imgs/e.png" }) + "\n\n" +
            JsonSerializer.Serialize(new { conversations = new[] { new { from = "human", value = "<image> describe" }, new { from = "gpt", value = "ok" } }, imgs = new[] { "imgs/a.png" } }) + "\n");
        var pref = new object[]
        {
            new { messages = new[] { U("Draw a red apple") }, chosen = A("Sure.<image_gen>"), rejected = A("Here.<image_gen>"), images = new[] { "imgs/a.png", "imgs/b.png" } },
        };
        File.WriteAllText(d["pref.json"], JsonSerializer.Serialize(pref));
    }

    [Fact]
    public void Every_record_type_is_classified_with_images_in_placeholder_order()
    {
        using var d = TestPaths.Temp();
        WriteSamples(d);
        var recs = DatasetLoader.Load(["mixed", "lines"], new DatasetLoadOptions { DatasetDir = d.Path });
        Assert.Equal([RecordKind.Understanding, RecordKind.Generation, RecordKind.Editing, RecordKind.Text, RecordKind.Generation, RecordKind.Understanding],
            recs.Select(r => r.Kind));
        Assert.Equal([false], recs[0].Images.Select(i => i.IsTarget));
        Assert.Equal([true], recs[1].Images.Select(i => i.IsTarget));
        Assert.Equal([false, true], recs[2].Images.Select(i => i.IsTarget));
        Assert.Equal([Path.Combine(d.Path, "imgs", "c.png"), Path.Combine(d.Path, "imgs", "d.png")], recs[2].Images.Select(i => i.Path));
        var text = recs[3];
        Assert.Equal("Be brief.", text.System);
        Assert.Equal(3, text.Prompt.Count);
        Assert.Equal("4", text.Response.Single().Content);
        Assert.Empty(text.Images);
        Assert.EndsWith("lines.jsonl", recs[4].File);
        Assert.Equal(1, recs[5].Index);

        var pref = Assert.Single(DatasetLoader.Load(["pref"], new DatasetLoadOptions { DatasetDir = d.Path, Ranking = true }));
        Assert.Equal(RecordKind.Preference, pref.Kind);
        Assert.Equal(["Sure.<image_gen>", "Here.<image_gen>"], pref.Response.Select(r => r.Content));
        Assert.Equal(["a.png", "b.png"], pref.Images.Select(i => Path.GetFileName(i.Path)));
        Assert.All(pref.Images, i => Assert.True(i.IsTarget));
    }

    [Fact]
    public void Max_samples_truncates_each_dataset()
    {
        using var d = TestPaths.Temp();
        WriteSamples(d);
        var recs = DatasetLoader.Load(["mixed", "lines"], new DatasetLoadOptions { DatasetDir = d.Path, MaxSamples = 1 });
        Assert.Equal(["mixed", "lines"], recs.Select(r => r.Dataset));
    }

    [Fact]
    public void Stage_and_ranking_must_agree()
    {
        using var d = TestPaths.Temp();
        WriteSamples(d);
        var e1 = Assert.Throws<InvalidFileException>(() => DatasetLoader.Load(["pref"], new DatasetLoadOptions { DatasetDir = d.Path }));
        Assert.Contains("'pref'", e1.Message);
        var e2 = Assert.Throws<InvalidFileException>(() => DatasetLoader.Load(["mixed"], new DatasetLoadOptions { DatasetDir = d.Path, Ranking = true }));
        Assert.Contains("'mixed'", e2.Message);
        var e3 = Assert.Throws<InvalidFileException>(() => DatasetLoader.Load(["nope"], new DatasetLoadOptions { DatasetDir = d.Path }));
        Assert.Contains("undefined dataset 'nope'", e3.Message);
    }

    [Fact]
    public void All_invalid_records_are_reported_at_once_with_file_index_field_and_reason()
    {
        using var d = TestPaths.Temp();
        WriteSamples(d);
        object U(string c) => new { role = "user", content = c };
        object A(string c) => new { role = "assistant", content = c };
        var bad = new object[]
        {
            new { messages = new[] { U("fine"), A("fine") } },                                                       // 0 ok
            new { messages = new[] { U("Draw"), A("<image_gen>") } },                                                // 1 no image for <image_gen>
            new { messages = new[] { A("hi"), U("x") } },                                                            // 2 roles swapped
            new { messages = new[] { U("Draw <image_gen>"), A("ok") }, images = new[] { "imgs/a.png" } },           // 3 <image_gen> in user turn
            new { messages = new[] { U("q") } },                                                                     // 4 odd turn count
            new { messages = new object[] { new { role = "user" }, A("a") } },                                       // 5 missing content
            new { messages = new[] { U("<image><image>"), A("<image_gen><image_gen>") }, images = new[] { "imgs/a.png", "imgs/b.png", "imgs/c.png", "imgs/d.png" } }, // 6 two gen images
        };
        File.WriteAllText(d["mixed.json"], JsonSerializer.Serialize(bad));
        var ex = Assert.Throws<DatasetValidationException>(() => DatasetLoader.Load(["mixed"], new DatasetLoadOptions { DatasetDir = d.Path }));
        var byIndex = ex.Issues.GroupBy(i => i.Index).ToDictionary(g => g.Key, g => g.ToList());
        Assert.Equal([1, 2, 3, 4, 5, 6], byIndex.Keys.Order());
        Assert.All(ex.Issues, i => Assert.EndsWith("mixed.json", i.File));
        Assert.Contains(byIndex[1], i => i.Field == "images" && i.Reason.Contains("0 image(s) for 0 <image> + 1 <image_gen>"));
        Assert.Contains(byIndex[2], i => i.Field == "messages[0].role" && i.Reason.Contains("expected 'user'"));
        Assert.Contains(byIndex[3], i => i.Field == "messages[0].content" && i.Reason.Contains("<image_gen> may only appear"));
        Assert.Contains(byIndex[4], i => i.Field == "messages" && i.Reason.Contains("even number"));
        Assert.Contains(byIndex[5], i => i.Field == "messages[0].content" && i.Reason.Contains("missing"));
        Assert.Contains(byIndex[6], i => i.Reason.Contains("one generated image per record"));
        Assert.Contains("mixed.json: record 2: field 'messages[0].role'", ex.Message);
    }

    [Fact]
    public void Preference_records_are_validated()
    {
        using var d = TestPaths.Temp();
        WriteSamples(d);
        object U(string c) => new { role = "user", content = c };
        object A(string c) => new { role = "assistant", content = c };
        var bad = new object[]
        {
            new { messages = new[] { U("x") }, chosen = A("no image"), rejected = A("<image_gen>"), images = new[] { "imgs/a.png", "imgs/b.png" } },
            new { messages = new[] { U("<image> x") }, chosen = A("<image_gen>"), rejected = A("<image_gen>"), images = new[] { "imgs/a.png", "imgs/b.png" } },
            new { messages = new[] { U("x"), A("y") }, chosen = A("<image_gen>"), rejected = U("<image_gen>"), images = new[] { "imgs/a.png" } },
        };
        File.WriteAllText(d["pref.json"], JsonSerializer.Serialize(bad));
        var ex = Assert.Throws<DatasetValidationException>(() => DatasetLoader.Load(["pref"], new DatasetLoadOptions { DatasetDir = d.Path, Ranking = true }));
        Assert.Contains(ex.Issues, i => i.Index == 0 && i.Field == "chosen.content");
        Assert.Contains(ex.Issues, i => i.Index == 1 && i.Reason.Contains("preference prompt"));
        Assert.Contains(ex.Issues, i => i.Index == 2 && i.Field == "messages" && i.Reason.Contains("odd number"));
        Assert.Contains(ex.Issues, i => i.Index == 2 && i.Field == "rejected.role");
    }

    [Fact]
    public void All_missing_images_are_listed_in_one_exception()
    {
        using var d = TestPaths.Temp();
        WriteSamples(d, withImages: false);
        var ex = Assert.Throws<MissingImagesException>(() => DatasetLoader.Load(["mixed", "lines"], new DatasetLoadOptions { DatasetDir = d.Path }));
        // mixed: a, b, c, d (record 3 has none); lines: e, a
        Assert.Equal(6, ex.Missing.Count);
        Assert.Contains(ex.Missing, m => m.Where.Contains("mixed.json: record 2 images[1]") && m.Image == "imgs/d.png");
        Assert.Contains(ex.Missing, m => m.Where.Contains("lines.jsonl: record 0 imgs[0]") && m.Image == "imgs/e.png");
        Assert.Contains(Path.Combine(d.Path, "imgs", "d.png"), ex.Message);
    }

    [Fact]
    public void Dataset_info_errors_name_the_dataset_and_key()
    {
        using var d = TestPaths.Temp();
        File.WriteAllText(d["dataset_info.json"], """
            { "a": {"file_name": "a.json", "formatting": "sharegpt", "colums": {}},
              "b": {"file_name": "b.json"},
              "c": {"hf_hub_url": "x/y", "formatting": "sharegpt"},
              "e": {"file_name": "e.csv", "formatting": "sharegpt"} }
            """);
        File.WriteAllText(d["e.csv"], "x");
        Assert.Contains("dataset 'a': unknown key 'colums'", Assert.Throws<InvalidFileException>(() => DatasetLoader.Load(["a"], new DatasetLoadOptions { DatasetDir = d.Path })).Message);
        Assert.Contains("formatting 'alpaca'", Assert.Throws<InvalidFileException>(() => DatasetLoader.Load(["b"], new DatasetLoadOptions { DatasetDir = d.Path })).Message);
        Assert.Contains("'hf_hub_url'", Assert.Throws<InvalidFileException>(() => DatasetLoader.Load(["c"], new DatasetLoadOptions { DatasetDir = d.Path })).Message);
        Assert.Contains("allowed file types", Assert.Throws<InvalidFileException>(() => DatasetLoader.Load(["e"], new DatasetLoadOptions { DatasetDir = d.Path })).Message);
    }
}
