using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Training;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Inference;
using VarGpt.Presets;

namespace VarGpt.ShapesWorld;

/// <summary>
/// The ShapesWorld recipe (<c>vargpt shapes train</c>). Step counts, not minutes, fix each stage so a run is a function
/// of the seed; the defaults fit the 60-minute budget on 2 cores (docs/shapesworld.md has the measured times).
/// </summary>
public sealed record ShapesTrainingOptions
{
    public required string OutputDir { get; init; }
    public int Seed { get; init; }
    /// <summary>Mixed-task training samples written to data/ (understanding, descriptions, text-to-image, edits).</summary>
    public int TrainSamples { get; init; } = 20000;
    /// <summary>Caption pairs of the alignment stage (descriptions and text-to-image, half each).</summary>
    public int AlignSamples { get; init; } = 6000;
    /// <summary>Samples of the understanding stage (three quarters questions, one quarter descriptions).</summary>
    public int UnderstandingSamples { get; init; } = 24000;
    public int EvalSamples { get; init; } = 400;
    /// <summary>VAE steps (of <see cref="VaeTrainingOptions.BatchSize"/> renders); why this many: <see cref="VaeTrainingOptions.RecipeSteps"/>.</summary>
    public int VaeSteps { get; init; } = VaeTrainingOptions.RecipeSteps;
    public int VaeEvalImages { get; init; } = 200;
    public int LoggingSteps { get; init; } = 10;
    public int VisionSteps { get; init; } = 300;
    public int UnderstandingSteps { get; init; } = 1600;
    /// <summary>Batch of the understanding stage: its sequences are short (no image to generate), so it takes more per step.</summary>
    public int UnderstandingBatchSize { get; init; } = 16;
    /// <summary>
    /// Freeze the pretrained vision tower (visual.*) in the understanding, alignment and SFT stages. Trained on by the
    /// language-model losses at lr 1e-3, its tokens collapsed toward one direction again (docs/shapesworld.md, Stage B).
    /// </summary>
    public bool FreezeVisionTower { get; init; } = true;
    public int AlignSteps { get; init; } = 400;
    /// <summary>
    /// Text-to-image samples of the generation stage (between alignment and SFT), drawn after every other training set.
    /// The generator had seen ~8,000 image targets by the end of SFT and drew the average scene whatever the prompt
    /// (r1; `shapes probe-text` on r4L: 80% of the last scale's bits right with teacher forcing, own prompt or not).
    /// </summary>
    public int GenerationSamples { get; init; } = 24000;
    public int GenerationSteps { get; init; } = 1500;
    /// <summary>Batch of the generation stage: every sample has a 121-token target, so a larger batch costs less than in proportion.</summary>
    public int GenerationBatchSize { get; init; } = 16;
    public int SftSteps { get; init; } = 1300;
    /// <summary>
    /// vargpt_gen_text_loss of the SFT stage. "labels": the text CE covers the answers only. The official
    /// get_gen_loss_1_1 ("official") also supervises the prompts of every batch that holds a generation target; trained
    /// so for 1300 steps, this 4-layer model continued user turns after the assistant's first token (measured on r3: after
    /// "The" of "The output image is:" it put 97% on &lt;|im_end|&gt; or question openings, and half the edit requests got
    /// no image). docs/shapesworld.md, "SFT text loss".
    /// </summary>
    public GenTextLoss SftGenTextLoss { get; init; } = GenTextLoss.Labels;
    public int BatchSize { get; init; } = 8;
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>DPO: prompts to sample for pairs, images per prompt, optimizer steps, pairs per batch, LoRA rank.</summary>
    public int DpoPrompts { get; init; } = 300;
    public int DpoSamplesPerPrompt { get; init; } = 4;
    public int DpoSteps { get; init; } = 120;
    /// <summary>DPO stops after this many passes over the mined pairs when that comes before <see cref="DpoSteps"/>
    /// (r3 trained 120 steps on 6 pairs, 80 epochs, and the adapter raised the edit requests left without an image from 50% to 66%).</summary>
    public double DpoMaxEpochs { get; init; } = 3;
    public int DpoBatchSize { get; init; } = 4;
    public double DpoLearningRate { get; init; } = 5e-4;
    public double DpoBeta { get; init; } = 0.1;
    public int LoraRank { get; init; } = 16;
    /// <summary>Gates (issue 16): each is measured on held-out data after its stage, printed and written to OUT/gates.json.
    /// VAE: scorer on round trips, every colour distinct; vision: the token probe per attribute; understanding: held-out
    /// questions; text-to-image after the generation stage and again after SFT, before DPO: at least the bottom of the band
    /// where DPO finds pairs.</summary>
    public double VaeGate { get; init; } = 0.99;
    public double VisionGate { get; init; } = 0.99;
    public double UnderstandingGate { get; init; } = 0.95;
    public double TextToImageGate { get; init; } = 0.20;
    /// <summary>Held-out samples each understanding / text-to-image gate evaluates.</summary>
    public int GateSamples { get; init; } = 200;
    /// <summary>false: a failed gate is recorded and the recipe goes on (smoke runs with a few steps per stage); true (default):
    /// the recipe stops with <see cref="ShapesGateFailedException"/> before any stage that would build on the failed one.</summary>
    public bool StopAtFailedGate { get; init; } = true;
    public TextWriter Output { get; init; } = TextWriter.Null;
}

/// <summary>
/// Trains the shipped small VARGPT from scratch with the classes and code paths of the 9B model: data and tokenizer,
/// the BSQ-VAE (<see cref="VaeTraining"/>), the vision tower's pretraining (<see cref="VisionPretraining"/>), then
/// LLaMA-Factory style stages run by <see cref="VargptFineTuning"/> from yaml files written next to their outputs (so
/// each stage can be rerun with <c>vargpt train sft|dpo FILE</c>): understanding (questions and descriptions),
/// alignment (caption pairs in both directions), SFT on all tasks, and DPO on sampled text-to-image pairs through a
/// LoRA adapter on the language model. Every stage leaves a marker OUT/NAME.done (beside its folder, so
/// output folders such as OUT/model hold only their content); a rerun skips finished stages and resumes the
/// current one from its latest checkpoint. The result, OUT/model, is a model folder: bf16 weights of the SFT state,
/// the DPO adapter in adapter/, shapesworld.json and the stage logs.
/// </summary>
public static class ShapesTraining
{
    public const string DataDir = "data", BaseDir = "base", VaeDir = "vae", VisionDir = "vision", UnderstandingDir = "understanding", AlignDir = "align", GenerationDir = "generation", SftDir = "sft", DpoDataDir = "dpo_data", DpoDir = "dpo", ModelDir = "model";
    public const string AlignName = "shapesworld_align", UnderstandingName = "shapesworld_understanding", GenerationName = "shapesworld_generation";
    public const string WorldFile = "shapesworld.json";
    /// <summary>The mining stage's <see cref="ShapesDpoStats"/> in OUT/dpo_data (its Pairs sizes the DPO stage).</summary>
    public const string MiningFile = "mining.json";

    public static string Run(ShapesTrainingOptions o, ShapesModelConfig? sizes = null, CancellationToken cancellationToken = default)
    {
        sizes ??= new ShapesModelConfig();
        sizes.Validate();
        var root = Path.GetFullPath(o.OutputDir);
        Directory.CreateDirectory(root);
        var log = o.Output;
        var total = Stopwatch.StartNew();
        var world = new ShapesWorldGenerator(WorldOptions(o.Seed, sizes));

        // ---- 0. data and tokenizer, the random initial model
        Stage(root, DataDir, log, () =>
        {
            var data = Path.Combine(root, DataDir);
            log.WriteLine($"writing {o.TrainSamples} training + {o.EvalSamples} held-out samples and {o.AlignSamples} caption pairs to {data}");
            ShapesDataset.Write(data, world, o.TrainSamples, o.EvalSamples);
            var align = world.Samples(ShapesSplit.Train, o.AlignSamples / 2, ShapesTaskKind.Description, start: o.TrainSamples)
                .Concat(world.Samples(ShapesSplit.Train, o.AlignSamples - o.AlignSamples / 2, ShapesTaskKind.TextToImage, start: o.TrainSamples));
            ShapesDataset.WriteDataset(data, AlignName, align, sizes.ImageSize);
            long uStart = o.TrainSamples + o.AlignSamples;
            int questions = o.UnderstandingSamples * 3 / 4;
            var understanding = world.Samples(ShapesSplit.Train, questions, ShapesTaskKind.Understanding, start: uStart)
                .Concat(world.Samples(ShapesSplit.Train, o.UnderstandingSamples - questions, ShapesTaskKind.Description, start: uStart + questions));
            ShapesDataset.WriteDataset(data, UnderstandingName, understanding, sizes.ImageSize);
            WriteGenerationData(root, o, world, sizes);
            var tokenizer = BpeTrainer.TrainShapesWorld(world);
            var baseDir = Path.Combine(root, BaseDir);
            Directory.CreateDirectory(baseDir);
            tokenizer.Save(baseDir);
            sizes.WriteModelFolder(baseDir, tokenizer);
            WriteWorld(baseDir, world.Options);
        });

        // ---- A. the BSQ-VAE, then the initial model = random init (HF initializer_range) + the trained VAE
        Stage(root, VaeDir, log, () =>
        {
            var vae = VaeTraining.Train(sizes, new VaeTrainingOptions { OutputDir = Path.Combine(root, VaeDir), Seed = o.Seed, Steps = o.VaeSteps, EvalImages = o.VaeEvalImages, LoggingSteps = o.LoggingSteps, Output = log, Cancel = cancellationToken },
                resume: TrainerCheckpoint.Latest(Path.Combine(root, VaeDir)) is not null);
            if (!vae.Training.Completed) throw Stopped(VaeDir, vae.Training);
            WriteInitialWeights(Path.Combine(root, BaseDir), Path.Combine(root, VaeDir, VaeTraining.WeightsFile), o.Seed);
        }, create: true);
        Gate(root, o, "vae", () => ShapesGates.Vae(VaeTraining.ReadEvaluation(Path.Combine(root, VaeDir)), o.VaeGate));

        // ---- B. the vision tower: a per-token probe teaches its tokens what is where (VARGPT starts from a pretrained ViT)
        Stage(root, VisionDir, log, () =>
        {
            var r = VisionPretraining.Run(new VisionPretrainingOptions
            {
                ModelDir = Path.Combine(root, BaseDir), OutputDir = Path.Combine(root, VisionDir), Seed = o.Seed, Steps = o.VisionSteps,
                LoggingSteps = o.LoggingSteps, Output = log, Cancel = cancellationToken,
            });
            if (!r.Training.Completed) throw Stopped(VisionDir, r.Training);
        }, create: true);
        Gate(root, o, "vision", () => ShapesGates.Vision(VisionPretraining.ReadEvaluation(Path.Combine(root, VisionDir)), o.VisionGate));

        // ---- C. understanding: questions and descriptions only (short sequences, so a larger batch), everything but the VAE
        // and (FreezeVisionTower) the pretrained tower
        var lmStage = o.FreezeVisionTower ? new Dictionary<string, string> { ["vargpt_freeze"] = "vision_tower" } : null;
        Stage(root, UnderstandingDir, log, () => RunYaml(root, UnderstandingDir, StageYaml(o, sizes, TrainingStage.Sft, VisionDir, [UnderstandingName], UnderstandingDir,
            o.UnderstandingSteps, o.UnderstandingBatchSize, o.LearningRate, lmStage), log, cancellationToken));
        Gate(root, o, "understanding", () => ShapesGates.Task("understanding",
            GateEvaluation(root, UnderstandingDir, o, ShapesEvaluationOptions.Only(ShapesTaskKind.Understanding, o.GateSamples), cancellationToken).Understanding,
            o.UnderstandingGate, "exact answers to held-out questions"));

        // ---- D. alignment: caption pairs in both directions (descriptions, text-to-image), everything but the VAE (and the tower)
        Stage(root, AlignDir, log, () => RunYaml(root, AlignDir, StageYaml(o, sizes, TrainingStage.Sft, UnderstandingDir, [AlignName], AlignDir, o.AlignSteps, o.BatchSize, o.LearningRate, lmStage), log, cancellationToken));

        // ---- E. generation: text-to-image pairs only, so the generator sees several times the image targets of the mixed stages
        var genStage = new Dictionary<string, string>(lmStage ?? []) { ["vargpt_gen_text_loss"] = TrainingConfig.YamlName(o.SftGenTextLoss) };
        Stage(root, GenerationDir, log, () =>
        {
            // runs whose data stage predates this stage get its dataset here (the same samples the data stage writes)
            WriteGenerationData(root, o, world, sizes);
            RunYaml(root, GenerationDir, StageYaml(o, sizes, TrainingStage.Sft, AlignDir, [GenerationName], GenerationDir, o.GenerationSteps, o.GenerationBatchSize, o.LearningRate, genStage), log, cancellationToken);
        });

        // the text-to-image gate, after the stage that teaches drawing and again after SFT
        void TextToImageGate(string name, string stageDir, string when) => Gate(root, o, name, () => ShapesGates.Task(name,
            GateEvaluation(root, stageDir, o, ShapesEvaluationOptions.Only(ShapesTaskKind.TextToImage, o.GateSamples), cancellationToken).Generation,
            o.TextToImageGate, $"held-out images with every requested attribute right, {when}"));
        TextToImageGate("generation", GenerationDir, "after the generation stage");

        // ---- F. SFT on all tasks
        Stage(root, SftDir, log, () => RunYaml(root, SftDir, StageYaml(o, sizes, TrainingStage.Sft, GenerationDir, [ShapesDataset.TrainName], SftDir, o.SftSteps, o.BatchSize, o.LearningRate, genStage), log, cancellationToken));
        TextToImageGate("text_to_image", SftDir, "before DPO");

        // ---- G. DPO on text-to-image pairs sampled from the SFT model (chosen = scorer-correct, rejected = wrong),
        // trained as a LoRA adapter on the language model with everything else frozen, so the adapter holds all of it
        string? adapter = null;
        Stage(root, DpoDataDir, log, () =>
        {
            using var images = VargptModel.Load(Path.Combine(root, SftDir));
            var r = ShapesDpoPairs.Mine(images, world, new ShapesDpoMiningOptions
            {
                Prompts = o.DpoPrompts, SamplesPerPrompt = o.DpoSamplesPerPrompt, Seed = o.Seed,
            }, log, cancellationToken);
            var s = r.Stats;
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"DPO pairs: {s.Pairs} from {s.Prompts} train prompts × {o.DpoSamplesPerPrompt} images; SFT model right on {s.FractionCorrect:P1} of them ({s.AllCorrect} prompts all right, {s.AllWrong} all wrong) in {s.Seconds:F0} s"));
            Directory.CreateDirectory(Path.Combine(root, DpoDataDir));
            if (s.Pairs > 0) ShapesDpoPairs.Write(Path.Combine(root, DpoDataDir), r.Pairs);
            File.WriteAllText(Path.Combine(root, DpoDataDir, MiningFile), JsonSerializer.Serialize(s, new JsonSerializerOptions { WriteIndented = true }) + "\n");
        });
        if (File.Exists(Path.Combine(root, DpoDataDir, ShapesDpoPairs.DatasetName + ".json")))
        {
            Stage(root, DpoDir, log, () => RunYaml(root, DpoDir, StageYaml(o, sizes, TrainingStage.Dpo, SftDir, [ShapesDpoPairs.DatasetName], DpoDir,
                DpoStepsFor(o, MinedPairs(Path.Combine(root, DpoDataDir))), o.DpoBatchSize, o.DpoLearningRate,
                new Dictionary<string, string>
                {
                    ["finetuning_type"] = "lora", ["lora_rank"] = o.LoraRank.ToString(CultureInfo.InvariantCulture),
                    ["lora_alpha"] = (2 * o.LoraRank).ToString(CultureInfo.InvariantCulture), ["lora_target"] = "all",
                    ["vargpt_freeze"] = "vision_tower,infinity,projectors,sos_embedding", ["pref_beta"] = o.DpoBeta.ToString(CultureInfo.InvariantCulture), ["pref_loss"] = "sigmoid",
                }), log, cancellationToken));
            adapter = Path.Combine(root, DpoDir, "adapter");
        }
        else log.WriteLine("no DPO pairs (the SFT model was right on all or none of the sampled images of every prompt): the model folder gets no adapter");

        // ---- the model folder
        Stage(root, ModelDir, log, () => Assemble(root, adapter));

        log.WriteLine($"ShapesWorld training done in {TrainerLog.Duration(total.Elapsed.TotalSeconds)}; model folder {Path.Combine(root, ModelDir)}");
        return Path.Combine(root, ModelDir);
    }

    /// <summary>
    /// OUT/model: the SFT state as bf16 model.safetensors (the released checkpoint's dtype) with config.json saying so,
    /// the tokenizer/processor/generation files, the DPO LoRA adapter in adapter/ (kept apart so the pre-DPO state of
    /// what DPO trains stays in the folder and dpo_gain is measured at eval time), shapesworld.json and the stage logs
    /// under training/.
    /// </summary>
    static void Assemble(string root, string? adapterDir)
    {
        var sft = Path.Combine(root, SftDir);
        // built beside OUT/model and renamed over it as a whole (AtomicFile.WriteFolder): a reader never sees half a model
        AtomicFile.WriteFolder(Path.Combine(root, ModelDir), tmp =>
        {
            TrainerCheckpoint.CopyDescriptiveFiles(sft, tmp);
            using (var st = SafeTensorsFile.Open(Path.Combine(sft, TrainerCheckpoint.ModelFile)))
            {
                var tensors = st.Tensors.Keys.Select(k => new KeyValuePair<string, Tensor>(k, st.Load(k))).ToList();
                try
                {
                    SafeTensorsWriter.Save(Path.Combine(tmp, TrainerCheckpoint.ModelFile), tensors, new Dictionary<string, string> { ["format"] = "pt" },
                        floatDType: ScalarType.BFloat16);
                }
                finally { foreach (var t in tensors) t.Value.Dispose(); }
            }
            TrainerCheckpoint.WriteConfig(tmp, sft, ScalarType.BFloat16);
            if (adapterDir is not null)
            {
                Directory.CreateDirectory(Path.Combine(tmp, "adapter"));
                foreach (var f in Directory.GetFiles(adapterDir)) File.Copy(f, Path.Combine(tmp, "adapter", Path.GetFileName(f)));
                // the base model is the folder the adapter sits in (not the run's sft/ path on the training machine)
                var cfgPath = Path.Combine(tmp, "adapter", "adapter_config.json");
                var node = JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject();
                node["base_model_name_or_path"] = "..";
                File.WriteAllText(cfgPath, node.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            }
            var training = Path.Combine(tmp, "training");
            Directory.CreateDirectory(training);
            foreach (var (stage, name) in new[] { (VaeDir, "vae"), (VisionDir, "vision"), (UnderstandingDir, "understanding"), (AlignDir, "align"), (GenerationDir, "generation"), (SftDir, "sft"), (DpoDir, "dpo") })
            {
                var jsonl = Path.Combine(root, stage, TrainerLog.JsonlFile);
                if (File.Exists(jsonl)) File.Copy(jsonl, Path.Combine(training, name + ".jsonl"));
            }
            var vaeEval = Path.Combine(root, VaeDir, VaeTraining.EvalFile);
            if (File.Exists(vaeEval)) File.Copy(vaeEval, Path.Combine(training, VaeTraining.EvalFile));
        }, replace: true);
    }

    /// <summary>data/shapesworld_generation: <see cref="ShapesTrainingOptions.GenerationSamples"/> text-to-image samples of the
    /// Train split, indexed after the mixed, alignment and understanding sets; written unless dataset_info.json lists it.</summary>
    static void WriteGenerationData(string root, ShapesTrainingOptions o, ShapesWorldGenerator world, ShapesModelConfig sizes)
    {
        var data = Path.Combine(root, DataDir);
        var info = Path.Combine(data, "dataset_info.json");
        if (File.Exists(info) && JsonNode.Parse(File.ReadAllText(info)) is JsonObject entries && entries.ContainsKey(GenerationName)) return;
        long start = (long)o.TrainSamples + o.AlignSamples + o.UnderstandingSamples;
        ShapesDataset.WriteDataset(data, GenerationName, world.Samples(ShapesSplit.Train, o.GenerationSamples, ShapesTaskKind.TextToImage, start: start), sizes.ImageSize);
    }

    public static ShapesWorldOptions WorldOptions(int seed, ShapesModelConfig sizes) => new() { Seed = seed, ImageSize = sizes.ImageSize };

    /// <summary>shapesworld.json: the generator options, so evaluation regenerates the same held-out split.</summary>
    public static void WriteWorld(string dir, ShapesWorldOptions w) =>
        File.WriteAllText(Path.Combine(dir, WorldFile), JsonSerializer.Serialize(w, new JsonSerializerOptions { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower }) + "\n");

    public static ShapesWorldOptions ReadWorld(string dir)
    {
        var path = Path.Combine(dir, WorldFile);
        if (!File.Exists(path)) throw new InputNotFoundException($"{path} not found: not a ShapesWorld model folder (it records the world seed and options)", path);
        var text = File.ReadAllText(path);
        try
        {
            // the seed fixes the held-out triples and every sample: a file without it must not silently mean seed 0
            if (JsonNode.Parse(text) is not JsonObject obj || obj["seed"] is not JsonValue seed || !seed.TryGetValue<int>(out _))
                throw new InvalidFileException($"{path}: field 'seed' (the ShapesWorld generator seed, an integer) is missing");
            return JsonSerializer.Deserialize<ShapesWorldOptions>(text, new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower })
                ?? throw new InvalidFileException($"{path}: empty");
        }
        catch (JsonException e) { throw new InvalidFileException($"{path}: {e.Message}", e); }
    }

    /// <summary>
    /// The gate <paramref name="name"/>: measured once (then read back from OUT/gates.json, so a rerun does not measure it
    /// again), printed, and — when it failed and <see cref="ShapesTrainingOptions.StopAtFailedGate"/> — the end of the run.
    /// </summary>
    static void Gate(string root, ShapesTrainingOptions o, string name, Func<ShapesGate> measure)
    {
        var gate = ShapesGates.Read(root).FirstOrDefault(g => g.Name == name) ?? measure();
        ShapesGates.Record(root, gate, o.Output, o.StopAtFailedGate);
    }

    /// <summary>A held-out evaluation of a stage's model folder for a gate (kept as STAGE/gate_eval.json).</summary>
    static ShapesEvaluationResult GateEvaluation(string root, string stageDir, ShapesTrainingOptions o, ShapesEvaluationOptions options, CancellationToken ct)
    {
        var dir = Path.Combine(root, stageDir);
        var r = ShapesEvaluation.Run(dir, options with { Examples = 0, MeasureBeforeDpo = false }, o.Output, ct);
        File.WriteAllText(Path.Combine(dir, GateEvalFile), r.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        return r;
    }

    public const string GateEvalFile = "gate_eval.json";

    /// <summary>OUT/name.done: the marker of a finished stage (its wall time).</summary>
    public static string DoneMarker(string root, string name) => Path.Combine(root, name + ".done");

    /// <summary>Runs <paramref name="body"/> unless the stage's marker exists; writes the marker (with the wall time) after it.</summary>
    static void Stage(string root, string name, TextWriter log, Action body, bool create = false)
    {
        var dir = Path.Combine(root, name);
        var done = DoneMarker(root, name);
        if (File.Exists(done)) { log.WriteLine($"[{name}] done already ({File.ReadAllText(done).Trim()}), skipping"); return; }
        if (create) Directory.CreateDirectory(dir);
        log.WriteLine($"[{name}] starting");
        var sw = Stopwatch.StartNew();
        body();
        File.WriteAllText(done, string.Create(CultureInfo.InvariantCulture, $"{sw.Elapsed.TotalSeconds:F0} s") + "\n");
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[{name}] finished in {TrainerLog.Duration(sw.Elapsed.TotalSeconds)}"));
    }

    /// <summary>Random init of every tensor (RandomCheckpoint: N(0, 0.02), norms 1) with the trained VAE in place, fp32.</summary>
    static void WriteInitialWeights(string baseDir, string vaeWeights, int seed)
    {
        var config = VargptConfig.Load(baseDir);
        var arch = ModelArchitecture.Enumerate(config, ScalarType.Float32);
        var tmp = Path.Combine(baseDir, "random");
        Directory.CreateDirectory(tmp);
        var files = RandomCheckpoint.WriteWeights(tmp, arch, seed);
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var f in files)
            {
                using var st = SafeTensorsFile.Open(f);
                foreach (var name in st.Tensors.Keys) tensors[name] = st.Load(name);
            }
            using (var vae = SafeTensorsFile.Open(vaeWeights))
                foreach (var name in vae.Tensors.Keys)
                {
                    if (!tensors.TryGetValue(name, out var old)) throw new InvalidFileException($"{vaeWeights}: tensor {name} is not part of the model");
                    var t = vae.Load(name, old.dtype);
                    if (!t.shape.SequenceEqual(old.shape)) throw new InvalidFileException($"{vaeWeights}: {name} has shape [{string.Join(",", t.shape)}], the model [{string.Join(",", old.shape)}]");
                    old.Dispose();
                    tensors[name] = t;
                }
            SafeTensorsWriter.Save(Path.Combine(baseDir, "model.safetensors"), tensors.Select(kv => kv), new Dictionary<string, string> { ["format"] = "pt" });
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
            Directory.Delete(tmp, recursive: true);
        }
    }

    /// <summary>DPO optimizer steps: <see cref="ShapesTrainingOptions.DpoSteps"/>, or fewer when
    /// <see cref="ShapesTrainingOptions.DpoMaxEpochs"/> passes over the pairs take fewer (at least one step).</summary>
    public static int DpoStepsFor(ShapesTrainingOptions o, int pairs) =>
        Math.Clamp((int)Math.Ceiling(o.DpoMaxEpochs * pairs / o.DpoBatchSize), 1, o.DpoSteps);

    /// <summary>The pair count the mining stage recorded in DIR/<see cref="MiningFile"/>.</summary>
    internal static int MinedPairs(string dpoDataDir)
    {
        var path = Path.Combine(dpoDataDir, MiningFile);
        var rerun = $"rerun the DPO mining stage: delete {dpoDataDir}.done";
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            return doc.RootElement.TryGetProperty(nameof(ShapesDpoStats.Pairs), out var p) && p.TryGetInt32(out var n)
                ? n : throw new InvalidFileException($"{path}: no integer '{nameof(ShapesDpoStats.Pairs)}' ({rerun})");
        }
        catch (JsonException e) { throw new InvalidFileException($"{path}: not valid JSON ({e.Message}; {rerun})", e); }
    }

    /// <summary>A LLaMA-Factory yaml for one stage (official keys; paths relative to the run folder).</summary>
    static string StageYaml(ShapesTrainingOptions o, ShapesModelConfig sizes, TrainingStage stage, string model, IReadOnlyList<string> datasets, string output, int steps, int batch, double lr,
        IReadOnlyDictionary<string, string>? extra = null)
    {
        // absolute paths: a relative one would be looked up in the working directory first, so `shapes train` run from a
        // folder with its own data/ or sft/ would read the wrong files
        var root = Path.GetFullPath(o.OutputDir);
        model = Path.Combine(root, model);
        output = Path.Combine(root, output);
        var sb = new StringBuilder();
        void Kv(string k, object v) => sb.Append(k).Append(": ").Append(Convert.ToString(v, CultureInfo.InvariantCulture)).Append('\n');
        sb.Append("# ShapesWorld stage '").Append(output).Append("' (written by vargpt shapes train; rerun: vargpt train ").Append(TrainingConfig.YamlName(stage)).Append(" THIS_FILE)\n");
        Kv("model_name_or_path", model);
        Kv("stage", TrainingConfig.YamlName(stage));
        Kv("do_train", "true");
        Kv("finetuning_type", extra is not null && extra.ContainsKey("finetuning_type") ? extra["finetuning_type"] : "full");
        Kv("vargpt_train_stage", 5);
        Kv("dataset", string.Join(",", datasets));
        Kv("dataset_dir", Path.Combine(root, stage == TrainingStage.Dpo ? DpoDataDir : DataDir));
        Kv("template", "vargpt_qwen2_vl");
        Kv("cutoff_len", 512);
        Kv("image_resolution", sizes.ImageSize * sizes.ImageSize);
        Kv("image_gen_resolution", sizes.ImageSize);
        Kv("vargpt_gen_augment", "false");
        Kv("output_dir", output);
        Kv("per_device_train_batch_size", batch);
        Kv("gradient_accumulation_steps", 1);
        Kv("learning_rate", lr);
        Kv("max_steps", steps);
        Kv("lr_scheduler_type", "cosine");
        Kv("warmup_ratio", 0.03);
        Kv("adam_beta2", 0.95);
        Kv("weight_decay", 0.0);
        Kv("max_grad_norm", 1.0);
        Kv("logging_steps", o.LoggingSteps);
        Kv("save_steps", 200);
        Kv("save_total_limit", 1);
        Kv("seed", o.Seed);
        if (extra is not null)
            foreach (var (k, v) in extra)
                if (k != "finetuning_type") Kv(k, v);
        return sb.ToString();
    }

    static void RunYaml(string root, string name, string yaml, TextWriter log, CancellationToken ct)
    {
        var path = Path.Combine(root, name + ".yaml");
        File.WriteAllText(path, yaml);
        // the recipe owns its stage folders: resume what a checkpoint holds, else start afresh (the trainer drops the log of
        // an attempt killed before its first checkpoint)
        var cfg = TrainingConfig.Load(path) with { ResumeFromCheckpoint = "latest" };
        var r = VargptFineTuning.Run(cfg, new FineTuningOptions { BaseDir = root, Output = log }, ct);
        if (r.ModelPath is null) throw Stopped(name, r.Training);
    }

    static OperationCanceledException Stopped(string stage, TrainingResult r) =>
        new($"stage {stage} stopped at step {r.GlobalStep} of {r.TotalSteps}" + (r.LastCheckpoint is null ? "" : $" (checkpoint {r.LastCheckpoint})") + "; rerun the same command to resume");
}
