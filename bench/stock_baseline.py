# Copied unchanged from the shared GPU kit (shared/gpu/stock_baseline.py): the stock-diffusers anchor.
"""Reference measurements of stock diffusers ZImagePipeline on one GPU, full-size random weights.

This is the anchor that the project's own benchmark is compared with, side by side in one run.
Stages (argv): build, stock, te, attn, staged, compile.
  build   writes a full-size checkpoint in the hub's layout (fp32 transformer in 3 shards,
          bf16 Qwen3-4B text encoder, bf16 VAE, a small BPE tokenizer) to $ZIMAGE_FULL_CKPT
  stock   from_pretrained(bf16) + .to("cuda"): load time, 1024x1024 8-step latency, peak VRAM,
          per-stage split (text encode / denoise / VAE decode), batching at 1024 and 512
  te      text encoder on the CPU: bf16/fp32, padding to 512 vs to the longest prompt
  attn    diffusers attention backends
  staged  the common low-VRAM recipe: text encoder on CPU, transformer + VAE on GPU
  compile regional torch.compile of the repeated blocks
Writes JSON lines to $OUT/baseline.jsonl. Weights are random (real ones cannot be fetched
there): speed and memory are real, images are noise. Needs diffusers (see make-device-wheels.sh).
"""
import json, os, sys, time, statistics, subprocess
import torch

OUT = os.environ.get("OUT", "/tmp/out")
os.makedirs(OUT, exist_ok=True)
CKPT = os.environ.get("ZIMAGE_FULL_CKPT", "/tmp/zfull")
RES = []


def log(**kw):
    RES.append(kw)
    with open(os.path.join(OUT, "baseline.jsonl"), "a") as f:
        f.write(json.dumps(kw) + "\n")
    print("RESULT", json.dumps(kw), flush=True)


def sync():
    torch.cuda.synchronize()


STEPS = 8  # diffusers >= 0.39: 8 steps = 8 transformer calls (Turbo)
PROMPT = ("A cute cyberpunk cat with mechanical implants sitting on a neon-lit rooftop at night, "
          "rain reflections, 8k high definition, cinematic lighting, detailed fur texture")


def build():
    from diffusers import ZImagePipeline, ZImageTransformer2DModel, AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3Config, Qwen3Model, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    if os.path.exists(os.path.join(CKPT, "model_index.json")):
        log(stage="build", cached=True)
        return
    t0 = time.time()
    torch.manual_seed(0)
    with torch.device("cuda"):
        tr = ZImageTransformer2DModel(axes_lens=[1536, 512, 512])  # fp32, as the hub ships it
        te = Qwen3Model(Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                                    num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                                    head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0,
                                    tie_word_embeddings=True, rms_norm_eps=1e-6)).to(torch.bfloat16)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                            latent_channels=16, layers_per_block=2, scaling_factor=0.3611, shift_factor=0.1159,
                            use_quant_conv=False, use_post_quant_conv=False, sample_size=1024).to(torch.bfloat16)
    t_init = time.time() - t0
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [PROMPT, "photo of a serene lake at sunrise, mist floating, photorealistic",
              "portrait of an old fisherman, wrinkles, soft window light, 85mm"] * 50
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    ptok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>", eos_token="<|im_end|>")
    ptok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}")
    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=sch, vae=vae, text_encoder=te, tokenizer=ptok, transformer=tr)
    t1 = time.time()
    pipe.save_pretrained(CKPT, max_shard_size="10GB")
    t_save = time.time() - t1
    del pipe, tr, te, vae
    torch.cuda.empty_cache()
    du = subprocess.run(["du", "-sb", CKPT], capture_output=True, text=True).stdout.split()[0]
    log(stage="build", init_s=round(t_init, 1), save_s=round(t_save, 1), bytes=int(du))


def gen(pipe, steps=8, size=1024, n=1, **kw):
    return pipe(prompt=[PROMPT] * n, height=size, width=size, num_inference_steps=steps, guidance_scale=0.0,
                generator=torch.Generator("cuda").manual_seed(42), output_type="pil", **kw).images


def timed(fn, reps=5, warm=1):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        sync(); t = time.perf_counter(); fn(); sync(); ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts), max(ts)


def stock():
    """The usual way: from_pretrained(bf16) then .to('cuda'); everything on the GPU."""
    from diffusers import ZImagePipeline
    os.system("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null")
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    pipe = ZImagePipeline.from_pretrained(CKPT, torch_dtype=torch.bfloat16)
    t_cpu = time.time() - t0
    t1 = time.time(); pipe.to("cuda"); sync(); t_gpu = time.time() - t1
    load_peak = torch.cuda.max_memory_allocated() / 2**30
    pipe.set_progress_bar_config(disable=True)
    torch.cuda.reset_peak_memory_stats()
    med, lo, hi = timed(lambda: gen(pipe))
    peak = torch.cuda.max_memory_allocated() / 2**30
    log(stage="stock", load_cpu_s=round(t_cpu, 1), to_gpu_s=round(t_gpu, 1), load_peak_gib=round(load_peak, 2),
        e2e_med_s=round(med, 3), e2e_min_s=round(lo, 3), e2e_max_s=round(hi, 3), gen_peak_gib=round(peak, 2))
    # split: text encoding on GPU, denoise per step, vae decode
    te_med = timed(lambda: pipe.encode_prompt(PROMPT, device="cuda", do_classifier_free_guidance=False), reps=5)[0]
    pe, _ = pipe.encode_prompt(PROMPT, device="cuda", do_classifier_free_guidance=False)
    ntok = int(pe[0].shape[0])
    lat = timed(lambda: pipe(prompt_embeds=pe, height=1024, width=1024, num_inference_steps=STEPS, guidance_scale=0.0,
                            generator=torch.Generator("cuda").manual_seed(1), output_type="latent"), reps=5)[0]
    lat1 = timed(lambda: pipe(prompt_embeds=pe, height=1024, width=1024, num_inference_steps=1, guidance_scale=0.0,
                             generator=torch.Generator("cuda").manual_seed(1), output_type="latent"), reps=5)[0]
    lats = pipe(prompt_embeds=pe, height=1024, width=1024, num_inference_steps=1, guidance_scale=0.0,
                generator=torch.Generator("cuda").manual_seed(1), output_type="latent").images
    vae_med = timed(lambda: pipe.vae.decode((lats.to(torch.bfloat16) / 0.3611) + 0.1159, return_dict=False), reps=5)[0]
    step_s = (lat - lat1) / (STEPS - 1)
    # flops per step (linear layers + attention), 1024x1024: 4096 image tokens + caption tokens
    params_main = sum(p.numel() for p in pipe.transformer.layers.parameters())
    params_ref = sum(p.numel() for p in pipe.transformer.noise_refiner.parameters())
    N = 4096 + ntok
    flops = 2 * params_main * N + 2 * params_ref * 4096 + 4 * N * N * 3840 * 30 + 4 * 4096 * 4096 * 3840 * 2
    log(stage="split", text_tokens=ntok, te_gpu_s=round(te_med, 4), denoise_s=round(lat, 3), step_s=round(step_s, 4),
        vae_decode_s=round(vae_med, 4), flops_per_step=flops, step_tflops=round(flops / step_s / 1e12, 1))
    # batching at 1024 and 512
    for size, n in [(1024, 2), (1024, 4), (512, 1), (512, 4), (512, 8)]:
        torch.cuda.reset_peak_memory_stats()
        m = timed(lambda: gen(pipe, size=size, n=n), reps=3)[0]
        log(stage="batch", size=size, n=n, e2e_s=round(m, 3), per_image_s=round(m / n, 3),
            peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    return pipe


def attn(pipe):
    pe, _ = pipe.encode_prompt(PROMPT, device="cuda", do_classifier_free_guidance=False)
    for be in ["native", "_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3"]:
        try:
            pipe.transformer.set_attention_backend(be)
            m = timed(lambda: pipe(prompt_embeds=pe, height=1024, width=1024, num_inference_steps=STEPS, guidance_scale=0.0,
                                   generator=torch.Generator("cuda").manual_seed(1), output_type="latent"), reps=3)[0]
            log(stage="attn", backend=be, denoise_s=round(m, 3))
        except Exception as e:
            log(stage="attn", backend=be, error=str(e)[:200])
    try:
        pipe.transformer.set_attention_backend("native")
    except Exception:
        pass


def te_cpu(pipe):
    """Text encoder on CPU: bf16 vs fp32, padding to 512 (diffusers default) vs to the longest prompt."""
    te = pipe.text_encoder.to("cpu")
    tok = pipe.tokenizer
    torch.set_num_threads(os.cpu_count())
    prompts = [PROMPT, "photo of a serene lake at sunrise, mist floating, photorealistic",
               "portrait of an old fisherman, wrinkles, soft window light, 85mm", "a red bicycle"] * 2
    msgs = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
    for dtype in [torch.bfloat16, torch.float32]:
        te = te.to(dtype)
        for pad, n in [("longest", 1), ("longest", 4), ("longest", 8), ("max_length", 1)]:
            enc = tok(msgs[:n], padding=pad, max_length=512, truncation=True, return_tensors="pt")
            def run():
                with torch.inference_mode():
                    te(input_ids=enc.input_ids, attention_mask=enc.attention_mask.bool(), output_hidden_states=True)
            ts = []
            run()
            for _ in range(2):
                t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
            m = min(ts)
            log(stage="te_cpu", dtype=str(dtype).split(".")[-1], padding=pad, n=n, tokens=int(enc.input_ids.shape[1]),
                s=round(m, 3), per_prompt_s=round(m / n, 3))
    # equality of embeddings: longest vs max_length padding (bf16)
    te = te.to(torch.float32)
    with torch.inference_mode():
        a = tok(msgs[:2], padding="longest", return_tensors="pt")
        b = tok(msgs[:2], padding="max_length", max_length=512, return_tensors="pt")
        ha = te(input_ids=a.input_ids, attention_mask=a.attention_mask.bool(), output_hidden_states=True).hidden_states[-2]
        hb = te(input_ids=b.input_ids, attention_mask=b.attention_mask.bool(), output_hidden_states=True).hidden_states[-2]
        diffs = [float((ha[i][a.attention_mask[i].bool()] - hb[i][b.attention_mask[i].bool()]).abs().max()) for i in range(2)]
    log(stage="te_pad_equiv", max_abs_diff=diffs)
    pipe.text_encoder.to(torch.bfloat16)


def staged():
    """The common low-VRAM recipe: transformer + VAE on the GPU, text encoder on the CPU."""
    from diffusers import ZImagePipeline
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    pipe = ZImagePipeline.from_pretrained(CKPT, torch_dtype=torch.bfloat16)
    pipe.transformer.to("cuda"); pipe.vae.to("cuda")
    pipe.set_progress_bar_config(disable=True)
    pe, _ = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
    pe = [p.to("cuda") for p in pe]
    torch.cuda.reset_peak_memory_stats()
    def run():
        return pipe.__class__.__call__(pipe, prompt_embeds=pe, height=1024, width=1024, num_inference_steps=STEPS,
                                       guidance_scale=0.0, generator=torch.Generator("cuda").manual_seed(1))
    try:
        m = timed(run, reps=3)[0]
        log(stage="staged", gpu_gen_s=round(m, 3), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
            reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2))
    except Exception as e:
        log(stage="staged", error=str(e)[:300])


def compiled(pipe):
    pe, _ = pipe.encode_prompt(PROMPT, device="cuda", do_classifier_free_guidance=False)
    t0 = time.time()
    pipe.transformer.compile_repeated_blocks(fullgraph=True)
    f = lambda: pipe(prompt_embeds=pe, height=1024, width=1024, num_inference_steps=STEPS, guidance_scale=0.0,
                     generator=torch.Generator("cuda").manual_seed(1), output_type="latent")
    f(); sync()
    log(stage="compile", first_call_s=round(time.time() - t0, 1), denoise_s=round(timed(f, reps=3)[0], 3))


if __name__ == "__main__":
    stages = sys.argv[1:] or ["build", "stock"]
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"], capture_output=True, text=True).stdout)
    print(subprocess.run("lscpu | grep -E 'Model name|^CPU\\(s\\)|Flags' | cut -c1-200", shell=True, capture_output=True, text=True).stdout)
    print("torch", torch.__version__)
    pipe = None
    for s in stages:
        t = time.time()
        try:
            if s == "build": build()
            elif s == "stock": pipe = stock()
            elif s == "attn": attn(pipe)
            elif s == "te": te_cpu(pipe)
            elif s == "staged":
                del pipe; pipe = None; torch.cuda.empty_cache(); staged()
            elif s == "compile": compiled(pipe)
        except Exception as e:
            import traceback; traceback.print_exc()
            log(stage=s, error=repr(e)[:300])
        print(f"stage {s} took {time.time()-t:.1f}s", flush=True)
    print("\n==== SUMMARY ====")
    for r in RES:
        print(json.dumps(r))
