#!/usr/bin/python3
"""PyTorch eager baseline for lumen's engine benchmark, and the report that merges both sides.

    baseline_engine.py pair --lumen BENCH_ENGINE --model DIR --out FILE.json [--shape NAME] [--rounds N]
        [--decode-rounds N] [--prefill-shapes 1x128,8x128,64x16] [--threads N] [--lumen-only]
    baseline_engine.py run --model DIR --out FILE.json [--shape NAME] [--reps N] [--decode-reps N]
        [--new-tokens N] [--prefill-shapes 1x128,8x128,64x16] [--only a,b] [--threads N]
        [--device cpu|cuda] [--dtype f32|bf16]
    baseline_engine.py report --results DIR --out FILE.md
    baseline_engine.py report-cuda --results DIR --out FILE.md [--meta FILE.json]

`pair` and `run` need torch (Debian's is /usr/bin/python3's). The eager side does what bench_engine
does, in plain eager PyTorch: a ~100-line llama forward (RMSNorm, rotate_half RoPE, GQA attention,
SwiGLU, tied or untied head, a preallocated KV cache) over the same safetensors file, the same token
ids and the same workload sizes. `pair` starts `bench_engine serve` and times prefill, decode and
fwd+bwd in rounds that alternate lumen's measurement and its own (bench/paired.py); `run` times
whole sections in one process and writes bench_engine run's JSON layout; with `--device cuda` it
does the same math on the GPU at `--dtype` (bench/run_cuda.sh). `report` and `report-cuda` need only
the standard library.
"""
import argparse
import json
import math
import os
import re
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paired  # noqa: E402

# The workload sizes; bench_engine.cpp uses the same ones.
PREFILL = [(1, 128), (8, 128), (64, 16)]
TRAIN = (8, 128)
PROMPT_LEN, NEW_TOKENS, WARMUP_NEW_TOKENS = 16, 128, 8
WINDOW = 32  # steady decode rate: from the first generated token's arrival to the (WINDOW+1)-th's
ALL_SECTIONS = "load,roofline,prefill,decode,fwd_bwd,check"
GPU_ROOFLINE_CALLS = 10  # products per timed repetition on CUDA; bench_engine.cpp uses the same count
DTYPES = {"f32": "float32", "bf16": "bfloat16"}


def token_at(b, t, vocab):
    return 1 + (b * 7919 + t * 104729 + 12345) % (vocab - 1)


# ---- the eager model -----------------------------------------------------------------------------

def load_safetensors(path):
    """name -> tensor, viewing a copy-on-write mapping of the file (no copy, as lumen does)."""
    import torch
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    try:
        import numpy as np
    except ImportError:  # a CUDA machine's torch need not come with numpy
        return load_safetensors_torch(path, n, header)
    raw = np.memmap(path, dtype=np.uint8, mode="c")
    dtypes = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        lo, hi = e["data_offsets"]
        arr = raw[8 + n + lo:8 + n + hi].view(dtypes[e["dtype"]]).reshape(e["shape"])
        out[name] = torch.from_numpy(arr)
    return out


def load_safetensors_torch(path, n, header):
    """load_safetensors without numpy: torch.frombuffer over a copy-on-write mmap of the file."""
    import mmap
    import torch
    dtypes = {"F32": torch.float32, "F16": torch.float16, "F64": torch.float64}
    with open(path, "rb") as f:
        raw = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # writable, so torch does not warn
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        lo, hi = e["data_offsets"]
        dt = dtypes[e["dtype"]]
        count = (hi - lo) // torch.tensor([], dtype=dt).element_size()
        out[name] = torch.frombuffer(raw, dtype=dt, count=count, offset=8 + n + lo).reshape(e["shape"])
    return out


class KVCache:
    def __init__(self, n_layers, batch, n_kv, capacity, d_head, device="cpu", dtype=None):
        import torch
        self.k = [torch.zeros(batch, n_kv, capacity, d_head, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(batch, n_kv, capacity, d_head, device=device, dtype=dtype) for _ in range(n_layers)]
        self.length = 0


class Llama:
    """HF LlamaForCausalLM's math, written out. Shapes: B batch, T new positions, Tk keys. At a half
    precision dtype RMSNorm and softmax run in float32, as in HF's llama and in lumen."""

    def __init__(self, folder, device="cpu", dtype=None):
        import torch
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
        self.D = cfg["hidden_size"]
        self.L = cfg["num_hidden_layers"]
        self.H = cfg["num_attention_heads"]
        self.K = cfg.get("num_key_value_heads", self.H)
        self.E = cfg.get("head_dim", self.D // self.H)
        self.V = cfg["vocab_size"]
        self.ctx = cfg.get("max_position_embeddings", 2048)
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        w = load_safetensors(os.path.join(folder, "model.safetensors"))
        moved = self.device.type != "cpu" or self.dtype != torch.float32
        if moved:  # one copy at load; on the CPU at float32 the weights stay views of the file
            w = {k: v.to(device=self.device, dtype=self.dtype) for k, v in w.items()}
        self.embed = w["model.embed_tokens.weight"]  # [V,D]
        self.head = w.get("lm_head.weight", self.embed)  # tied unless the file has its own
        self.norm = w["model.norm.weight"]
        self.layers = []
        for l in range(self.L):
            p = f"model.layers.{l}."
            self.layers.append({k: w[p + n] for k, n in [
                ("ln1", "input_layernorm.weight"), ("wq", "self_attn.q_proj.weight"),
                ("wk", "self_attn.k_proj.weight"), ("wv", "self_attn.v_proj.weight"),
                ("wo", "self_attn.o_proj.weight"), ("ln2", "post_attention_layernorm.weight"),
                ("wg", "mlp.gate_proj.weight"), ("wu", "mlp.up_proj.weight"), ("wd", "mlp.down_proj.weight")]})
        theta = cfg.get("rope_theta", 10000.0)
        inv = 1.0 / theta ** (torch.arange(0, self.E, 2, dtype=torch.float64) / self.E)
        ang = torch.outer(torch.arange(self.ctx, dtype=torch.float64), inv)
        ang = torch.cat([ang, ang], -1)  # [ctx,E], HF's layout for rotate_half
        self.cos, self.sin = ang.cos().float(), ang.sin().float()
        if moved:
            self.cos, self.sin = self.cos.to(self.device, self.dtype), self.sin.to(self.device, self.dtype)
        self.n_params = sum(t.numel() for t in w.values())

    def rms_norm(self, x, w):
        import torch
        if x.dtype == torch.float32:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * w

    @staticmethod
    def rotate_half(x):
        import torch
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], -1)

    def new_cache(self, batch, capacity):
        return KVCache(self.L, batch, self.K, capacity, self.E, self.device, self.dtype)

    def forward(self, tokens=None, embeds=None, cache=None, hidden=None):
        import torch
        import torch.nn.functional as F
        x = F.embedding(tokens, self.embed) if embeds is None else embeds  # [B,T,D]
        B, T, _ = x.shape
        H, K, E = self.H, self.K, self.E
        p0 = cache.length if cache is not None else 0
        Tk = p0 + T
        cos, sin = self.cos[p0:Tk], self.sin[p0:Tk]  # [T,E]
        mask = torch.ones(T, Tk, dtype=torch.bool, device=x.device).tril(p0) if T > 1 else None  # [T,Tk]
        for l, w in enumerate(self.layers):
            h = self.rms_norm(x, w["ln1"])
            q = F.linear(h, w["wq"]).view(B, T, H, E).transpose(1, 2)  # [B,H,T,E]
            k = F.linear(h, w["wk"]).view(B, T, K, E).transpose(1, 2)  # [B,K,T,E]
            v = F.linear(h, w["wv"]).view(B, T, K, E).transpose(1, 2)
            q = q * cos + self.rotate_half(q) * sin
            k = k * cos + self.rotate_half(k) * sin
            if cache is not None:
                cache.k[l][:, :, p0:Tk] = k
                cache.v[l][:, :, p0:Tk] = v
                k, v = cache.k[l][:, :, :Tk], cache.v[l][:, :, :Tk]
            if H != K:  # HF's repeat_kv
                k = k.repeat_interleave(H // K, dim=1)
                v = v.repeat_interleave(H // K, dim=1)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(E)  # [B,H,T,Tk]
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            p = s.softmax(-1) if s.dtype == torch.float32 else s.softmax(-1, dtype=torch.float32).to(s.dtype)
            z = p @ v  # [B,H,T,E]
            x = x + F.linear(z.transpose(1, 2).reshape(B, T, H * E), w["wo"])
            h = self.rms_norm(x, w["ln2"])
            x = x + F.linear(F.silu(F.linear(h, w["wg"])) * F.linear(h, w["wu"]), w["wd"])
            if hidden is not None:  # HF's output_hidden_states: blocks.l.hook_resid_post
                hidden.append(x)
        if cache is not None:
            cache.length = Tk
        return F.linear(self.rms_norm(x, self.norm), self.head)  # [B,T,V]


# ---- timing ---------------------------------------------------------------------------------------

# torch.cuda.synchronize under `run --device cuda`: CUDA work is asynchronous, so without it a
# clock read would time the launches, not the work.
_sync = None


def sync():
    if _sync is not None:
        _sync()


def time_reps(warmup, reps, fn):
    """`warmup` untimed calls, then `reps` timed ones (seconds each); on CUDA the queue is drained
    before the first clock read and after every call."""
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def timing(times):
    return {"times": times, "median": statistics.median(times)}


def bench_tokens(B, T, vocab, device="cpu"):
    import torch
    return torch.tensor([[token_at(b, t, vocab) for t in range(T)] for b in range(B)], dtype=torch.long, device=device)


def evict_from_page_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_load(folder, reps):
    import torch
    evict_from_page_cache(os.path.join(folder, "model.safetensors"))
    t0 = time.perf_counter()
    m = Llama(folder)
    out = {"cold_ms": 1e3 * (time.perf_counter() - t0)}
    with torch.no_grad():
        t0 = time.perf_counter()
        m.forward(bench_tokens(1, 1, m.V))
        out["first_forward_cold_ms"] = 1e3 * (time.perf_counter() - t0)
    del m
    warm = []
    for _ in range(reps):
        t0 = time.perf_counter()
        Llama(folder)
        warm.append(1e3 * (time.perf_counter() - t0))
    out["warm_ms"] = warm
    out["warm_median_ms"] = statistics.median(warm)
    return out


def roofline(m, reps):
    """Best GFLOP/s over the model's GEMM shapes with 1024 rows at the model's device and dtype. On
    CUDA a timed repetition runs GPU_ROOFLINE_CALLS products: one takes about what a synchronize costs."""
    import torch
    import torch.nn.functional as F
    M, D, Fm = 1024, m.D, m.layers[0]["wg"].shape[0]
    shapes, best = {}, 0.0
    calls = GPU_ROOFLINE_CALLS if m.device.type == "cuda" else 1

    def run(name, k, n, weight_layout):
        nonlocal best
        x = torch.randn(M, k, device=m.device, dtype=m.dtype)
        w = torch.randn(n, k, device=m.device, dtype=m.dtype) if weight_layout else torch.randn(k, n, device=m.device, dtype=m.dtype)
        one = (lambda: F.linear(x, w)) if weight_layout else (lambda: torch.mm(x, w))

        def f():
            for _ in range(calls):
                one()

        g = 2.0 * M * k * n * calls / min(time_reps(2, reps, one if calls == 1 else f)) / 1e9
        shapes[name] = g
        best = max(best, g)

    with torch.no_grad():
        run(f"mm {M}x{D}x{Fm}", D, Fm, False)
        run(f"linear {M}x{D}->{Fm}", D, Fm, True)
        run(f"linear {M}x{Fm}->{D}", Fm, D, True)
        run(f"linear {M}x{D}->{D}", D, D, True)
    return {"gflops": best, "shapes": shapes}


def bench_prefill(m, batches, reps):
    import torch
    out = {}
    with torch.no_grad():
        for B, T in batches:
            tok = bench_tokens(B, T, m.V, m.device)
            out[f"{B}x{T}"] = timing(time_reps(1, reps, lambda: m.forward(tok)))
    return out


def generate(m, prompt, n_new):
    """Greedy decoding with the KV cache, timed like lumen::generate: decode = after the prompt pass
    (on CUDA: after it is launched, as lumen::generate reads its clock; each int() of an argmax waits
    for the GPU, so the arrivals and the end follow finished work)."""
    import torch
    with torch.no_grad():
        cache = m.new_cache(1, len(prompt) + n_new)
        last = m.forward(torch.tensor([prompt], device=m.device), cache=cache)[:, -1]  # [1,V]
        t1 = time.perf_counter()
        out, arrivals = [], []
        for step in range(n_new):
            tok = int(last[0].argmax())
            out.append(tok)
            arrivals.append(time.perf_counter())
            if step + 1 == n_new:
                break
            last = m.forward(torch.tensor([[tok]], device=m.device), cache=cache)[:, -1]
        return out, time.perf_counter() - t1, arrivals


def bench_decode(m, new_tokens, reps):
    prompt = [token_at(0, t, m.V) for t in range(PROMPT_LEN)]
    generate(m, prompt, WARMUP_NEW_TOKENS)  # warm-up
    decode, e2e, window = [], [], []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        tokens, d, arrivals = generate(m, prompt, new_tokens)
        e2e.append(time.perf_counter() - t0)
        decode.append(d)
        if len(arrivals) > WINDOW:
            window.append(arrivals[WINDOW] - arrivals[0])
    out = {"prompt": PROMPT_LEN, "new_tokens": len(tokens), "times": decode,
           "median": statistics.median(decode), "e2e_median": statistics.median(e2e), "tokens": tokens}
    if window:
        out["window"] = {"tokens": WINDOW, "times": window, "median": statistics.median(window)}
    return out


def fwd_bwd_step(m):
    """The fwd+bwd workload as a callable: forward at TRAIN from the embeddings, loss =
    logsumexp(logits).mean(), the gradient with respect to the embeddings; returns its norm."""
    import torch
    import torch.nn.functional as F
    B, T = TRAIN
    emb0 = F.embedding(bench_tokens(B, T, m.V, m.device), m.embed).contiguous()

    def step():
        emb = emb0.detach().requires_grad_(True)
        loss = m.forward(embeds=emb).logsumexp(-1).mean()
        (g,) = torch.autograd.grad(loss, emb)
        return float(g.norm())

    return step


def bench_fwd_bwd(m, reps):
    step, norm = fwd_bwd_step(m), [0.0]
    out = timing(time_reps(1, reps, lambda: norm.__setitem__(0, step())))
    out["grad_norm"] = norm[0]
    return {f"{TRAIN[0]}x{TRAIN[1]}": out}


def check_values(m):
    """The last position's logits of the 1x128 prefill, summed in float32 whatever the dtype."""
    import torch
    with torch.no_grad():
        logits = m.forward(bench_tokens(1, 128, m.V, m.device))[0, 127].float()
    return {"logits_last_sum": float(logits.sum()), "logits_last_absmax": float(logits.abs().max()),
            "argmax_last": int(logits.argmax())}


def device_dtype(args):
    """--device cpu|cuda[:N] and --dtype f32|bf16 -> (torch.device, torch.dtype), checked before
    anything loads; a one-line exit naming what was expected otherwise."""
    global _sync
    import torch
    dev, dt = args.device or "cpu", args.dtype or "f32"
    if dt not in DTYPES:
        sys.exit(f"baseline_engine.py: --dtype {dt}: expected f32 or bf16")
    if dev != "cpu" and not re.fullmatch(r"cuda(:\d+)?", dev):
        sys.exit(f"baseline_engine.py: --device {dev}: expected cpu, cuda or cuda:N")
    device = torch.device(dev)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
            sys.exit(f"baseline_engine.py: --device {dev}: CUDA is not available (torch {torch.__version__}, {build})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            sys.exit(f"baseline_engine.py: --device {dev}: only {torch.cuda.device_count()} CUDA device(s)")
        if device.index is not None:  # set_device refuses a device without an index
            torch.cuda.set_device(device)
        _sync = torch.cuda.synchronize
    return device, getattr(torch, DTYPES[dt])


def run(args):
    import torch
    device, dtype = device_dtype(args)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    skipped = {}
    if device.type == "cuda" and "load" in only:  # it times mmap and the page cache: a CPU measurement
        only.discard("load")
        skipped["load"] = "not on CUDA: times mmap and the page cache, a CPU measurement"
    batches = [tuple(int(v) for v in b.split("x")) for b in args.prefill_shapes.split(",")]
    out = {"impl": "eager", "shape": args.shape or os.path.basename(os.path.normpath(args.model)),
           "model": args.model, "omp_wait_policy": (os.environ.get("OMP_WAIT_POLICY") or "default").lower(),
           "intra_op_threads": torch.get_num_threads(), "threads_requested": args.threads, "torch": torch.__version__,
           "reps": args.reps, "decode_reps": args.decode_reps}
    if args.device is not None or args.dtype is not None:  # recorded when asked for, as bench_engine does
        out["device"], out["dtype"] = str(device), args.dtype or "f32"
        if device.type == "cuda":
            out["device_name"] = torch.cuda.get_device_name(device)
            out["cuda"] = torch.version.cuda
    if skipped:
        out["skipped"] = skipped
    if "load" in only:
        out["load"] = bench_load(args.model, args.reps)
    m = Llama(args.model, device, dtype)
    out["config"] = {"d_model": m.D, "n_layers": m.L, "n_heads": m.H, "n_kv_heads": m.K, "d_head": m.E,
                     "d_mlp": m.layers[0]["wg"].shape[0], "d_vocab": m.V, "n_ctx": m.ctx, "n_params": m.n_params}
    sections = [("roofline", lambda: roofline(m, max(args.reps, 3))),
                ("prefill", lambda: bench_prefill(m, batches, args.reps)),
                ("decode", lambda: bench_decode(m, args.new_tokens, args.decode_reps)),
                ("fwd_bwd", lambda: bench_fwd_bwd(m, args.reps)),
                ("check", lambda: check_values(m))]
    for name, fn in sections:
        if name in only:
            print(f"  eager {out['shape']} {name}...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            out[name] = fn()
            print(f"    {time.perf_counter() - t0:.3g} s", file=sys.stderr, flush=True)
    if "roofline" in only:  # again after the workloads: the best of both moments, as bench_engine does
        again = roofline(m, max(args.reps, 3))
        for name, g in again["shapes"].items():
            out["roofline"]["shapes"][name] = max(out["roofline"]["shapes"][name], g)
        out["roofline"]["gflops"] = max(out["roofline"]["gflops"], again["gflops"])
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


# ---- paired rounds --------------------------------------------------------------------------------

def pair(args):
    """Prefill, decode and fwd+bwd in paired rounds against `bench_engine serve` on the same model
    (bench/paired.py), with both sides' rooflines measured before and after; one JSON out. Without
    torch (--lumen-only) lumen runs alone."""
    torch = None
    if not args.lumen_only:
        import torch
        if args.threads > 0:
            torch.set_num_threads(args.threads)
    lumen = paired.Server([args.lumen, "serve", "--model", args.model, "--threads", str(args.threads)])
    ready = lumen.ready["ready"]
    m = None if torch is None else Llama(args.model)
    out = {"impl": "pair", "shape": args.shape or os.path.basename(os.path.normpath(args.model)), "model": args.model,
           "omp_wait_policy": ready["omp_wait_policy"], "config": ready["config"], "rounds": args.rounds,
           "decode_rounds": args.decode_rounds, "intra_op_threads": {"lumen": ready["intra_op_threads"],
                                                                     "eager": torch.get_num_threads() if torch else None},
           "load_start": paired.load_now()}
    say = lambda what: print(f"  {out['shape']} {what}", file=sys.stderr, flush=True)  # noqa: E731
    no_grad = torch.no_grad if torch else None

    def both(rounds, lumen_fn, eager_fn):
        return paired.rounds(rounds, lumen_fn, eager_fn if m is not None else None)

    def mean_seconds(fn, calls, warmup=0):
        for _ in range(warmup):
            fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls

    roof = {"lumen": [], "eager": []}

    def rooflines():
        say("roofline")
        lu, ea = both(1, lambda r: lumen.call("roofline", reps=3), lambda r: roofline(m, 3))
        roof["lumen"] += lu
        roof["eager"] += [e for e in ea if e]

    def calls_for(first):
        """Calls per round so that a round takes at least --min-round-s on the faster side."""
        fastest = min(t for t in first if t)
        return max(1, min(args.max_calls, math.ceil(args.min_round_s / fastest)))

    # The machine's GEMM rate moves with the load of other jobs (125-236 GFLOP/s in one day on the
    # 2-core box), so a roofline taken minutes apart from a workload compares two machines. Each
    # round of a prefill or fwd+bwd therefore also times the roofline, on its side, right before
    # the workload; % roofline is the median of the per-round shares.
    lumen_roof = lambda: lumen.call("roofline", reps=1)["gflops"]  # noqa: E731
    eager_roof = lambda: roofline(m, 1)["gflops"]  # noqa: E731

    def with_roofline(sink, roof_fn, work_fn):
        sink.append(roof_fn())
        return work_fn()

    rooflines()
    out["prefill"] = {}
    for b, t in [tuple(int(v) for v in x.split("x")) for x in args.prefill_shapes.split(",")]:
        key = f"{b}x{t}"
        tok = bench_tokens(b, t, m.V) if m is not None else None

        def eager_prefill(calls, warmup=0):
            with no_grad():
                return mean_seconds(lambda: m.forward(tok), calls, warmup)

        first = [lumen.call("prefill", batch=key, warmup=1)["seconds"], eager_prefill(1, 1) if m is not None else None]
        calls = calls_for(first)
        say(f"prefill {key}: {args.rounds} rounds of {calls} calls, each after its own roofline")
        rr = {"lumen": [], "eager": []}
        lu, ea = both(args.rounds, lambda r: with_roofline(rr["lumen"], lumen_roof,
                                                           lambda: b * t / lumen.call("prefill", batch=key, calls=calls)["seconds"]),
                      lambda r: with_roofline(rr["eager"], eager_roof, lambda: b * t / eager_prefill(calls)))
        out["prefill"][key] = {"calls": calls, **paired.summary(lu, ea), "round_roofline": rr}

    say(f"decode {NEW_TOKENS} tokens: {args.decode_rounds} rounds")
    prompt = [token_at(0, t, out["config"]["d_vocab"]) for t in range(PROMPT_LEN)]
    dec = {"lumen": [], "eager": []}

    def lumen_decode(r):
        d = lumen.call("decode", new_tokens=NEW_TOKENS, warmup=r == 0)  # a short decode first
        dec["lumen"].append(d)
        return len(d["tokens"]) / d["seconds"]

    def eager_decode(r):
        if r == 0:
            generate(m, prompt, WARMUP_NEW_TOKENS)
        tokens, secs, arrivals = generate(m, prompt, NEW_TOKENS)
        dec["eager"].append({"seconds": secs, "tokens": tokens})
        if len(arrivals) > WINDOW:
            dec["eager"][-1]["window"] = arrivals[WINDOW] - arrivals[0]
        return len(tokens) / secs

    lu, ea = both(args.decode_rounds, lumen_decode, eager_decode)
    out["decode"] = {"new_tokens": NEW_TOKENS, "prompt": PROMPT_LEN, **paired.summary(lu, ea),
                     "tokens": {k: v[-1]["tokens"] if v else None for k, v in dec.items()}}

    step = fwd_bwd_step(m) if m is not None else None
    key = f"{TRAIN[0]}x{TRAIN[1]}"
    first = [lumen.call("fwd_bwd", warmup=1)["seconds"], mean_seconds(step, 1, 1) if step else None]
    calls = calls_for(first)
    say(f"fwd+bwd {key}: {args.rounds} rounds of {calls} calls")
    n_tok = TRAIN[0] * TRAIN[1]
    rr = {"lumen": [], "eager": []}
    lu, ea = both(args.rounds, lambda r: with_roofline(rr["lumen"], lumen_roof,
                                                       lambda: n_tok / lumen.call("fwd_bwd", calls=calls)["seconds"]),
                  lambda r: with_roofline(rr["eager"], eager_roof, lambda: n_tok / mean_seconds(step, calls)))
    out["fwd_bwd"] = {key: {"calls": calls, **paired.summary(lu, ea), "round_roofline": rr}}

    rooflines()
    out["roofline"] = {k: {"gflops": max(r["gflops"] for r in v), "gflops_each": [r["gflops"] for r in v]} if v else None
                       for k, v in roof.items()}
    lumen.close()
    out["load_end"] = paired.load_now()
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


# ---- the report -----------------------------------------------------------------------------------

def fwd_flops(c, B, T):
    """Forward FLOPs of B x T tokens: every matmul, attention over the full T x T score matrix (what
    both implementations compute before masking), and the unembedding."""
    D, L, H, K, E, Fm, V = (c[k] for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_mlp", "d_vocab"))
    per_token = L * (2 * D * (H * E + 2 * K * E) + 2 * H * E * D + 2 * 3 * D * Fm + 2 * 2 * H * E * T) + 2 * D * V
    return B * T * per_token


def fwd_bwd_flops(c, B, T):
    """Backward to the activations only (the weights need no grad): one product per forward linear,
    two per attention product."""
    attn = B * T * c["n_layers"] * 2 * 2 * c["n_heads"] * c["d_head"] * T
    f = fwd_flops(c, B, T)
    return f + (f - attn) + 2 * attn


class Results:
    """Every run's JSON. The paired rounds (run.sh's pair-SHAPE.json, from `pair`) are kept by shape
    in self.pairs. The other runs are keyed by (impl, shape, OpenMP wait policy, requested threads
    (0 = torch's default), group): run.sh names them IMPL-SHAPE-POLICY-tTHREADS-UNIT.json; unit
    "omp" files form the "omp" group (the wait-policy pairs), the rest (load, GEMV probe, hook
    caching, value check) the "main" group, whose sections are merged here."""

    def __init__(self, folder):
        self.runs, self.pairs = {}, {}
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".json"):
                continue
            with open(os.path.join(folder, name)) as f:
                part = json.load(f)
            if part.get("impl") == "pair":
                self.pairs[part["shape"]] = part
                continue
            group = "omp" if name.endswith("-omp.json") else "main"
            key = (part["impl"], part["shape"], part["omp_wait_policy"], part.get("threads_requested", 0), group)
            r = self.runs.setdefault(key, {})
            for k, v in part.items():
                if k in ("prefill", "fwd_bwd"):
                    for batch, t in v.items():
                        r.setdefault(k, {})[batch] = t
                elif k != "roofline":
                    r[k] = v

    def get(self, key, *path):
        r = self.runs.get(key)
        for p in path:
            if not isinstance(r, dict) or p not in r:
                return None
            r = r[p]
        return r

    def tok_s(self, key, section, batch, best=False):
        t = self.get(key, section, batch, "median")
        if best:
            times = self.get(key, section, batch, "times")
            t = min(times) if times else None
        b, n = map(int, batch.split("x"))
        return b * n / t if t else None

    def decode_tok_s(self, key, window=False, best=False):
        d = self.get(key, "decode")
        if not d:
            return None
        if window:
            d = d.get("window")
            if not d:
                return None
        t = min(d["times"]) if best else d["median"]
        return d["tokens" if window else "new_tokens"] / t


def fmt(x, unit=""):
    if x is None:
        return "—"
    return (f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}") + unit


def report(args):
    res = Results(args.results)
    order = {"15M": 0, "42M": 1, "110M": 2}
    shapes = sorted({k[1] for k in res.runs} | set(res.pairs), key=lambda s: (order.get(s, 9), s))
    meta = {}
    if args.meta and os.path.exists(args.meta):
        with open(args.meta) as f:
            meta = json.load(f)
    lines, misses = [], []
    w = lines.append

    def ratio(a, b):
        return a / b if a and b else None

    def status(ok, label):
        if ok is None:
            return "—"
        if not ok:
            misses.append(label)
        return "PASS" if ok else "**MISS**"

    def pct(p):
        return f"{p:.0f}%" if p is not None else "—"

    def times(r):
        return f"{r:.2f}×" if r else "—"

    w("# lumen engine benchmark")
    w("")
    if meta:
        w(" · ".join(f"{k}: {v}" for k, v in meta.items()))
        w("")
    w("## lumen vs PyTorch eager (both OMP_WAIT_POLICY=PASSIVE, torch's default thread count)")
    w("")
    w("Paired rounds: each round times lumen and eager back to back, alternating which goes first "
      "(bench/README.md). Throughput in tokens/s, medians over the rounds; lumen/eager = the median of the "
      "per-round ratios (>1: lumen faster), with their min–max range and, from 5 rounds on, a 95% bootstrap "
      "interval (CI) of that median. % roofline = the median over rounds of the model's GFLOP/s over the "
      "best fp32 GEMM GFLOP/s that the same side measured right before, in that round. "
      "Status judges the median ratio.")
    w("")
    w("| shape | workload | lumen | eager | lumen/eager (range) | lumen % roofline | eager % roofline | target | status |")
    w("|---|---|---:|---:|---:|---:|---:|---|---|")
    for s in shapes:
        P = res.pairs.get(s)
        L, E = ("lumen", s, "passive", 0, "main"), ("eager", s, "passive", 0, "main")
        c = (P or {}).get("config") or res.get(L, "config") or res.get(E, "config")
        if c is None:
            continue
        if P:
            roof_l = (P["roofline"].get("lumen") or {}).get("gflops")
            roof_e = (P["roofline"].get("eager") or {}).get("gflops")
            w(f"| {s} | GEMM roofline: best of the model's shapes, before and after the workloads (GFLOP/s) "
              f"| {fmt(roof_l)} | {fmt(roof_e)} | | | | | |")
            rr = ((P["prefill"].get("8x128") or {}).get("round_roofline") or {})
            if rr.get("lumen"):
                def spread(xs):
                    return f"{fmt(statistics.median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})" if xs else "—"
                w(f"| {s} | GEMM roofline in each prefill 8×128 round, right before the workload: median (min–max) "
                  f"| {spread(rr['lumen'])} | {spread(rr.get('eager') or [])} | | | | | |")

            def pct_of(tok_s, flops_per_tok, roof):
                return 100.0 * tok_s * flops_per_tok / 1e9 / roof if tok_s and roof else None

            def pcts(q, side, flops_per_tok, roof):
                """Median per-round share of the roofline timed in that round; runs from before the
                per-round rooflines fall back to the median rate over the best roofline."""
                each = (q.get("round_roofline") or {}).get(side) or []
                rates = q.get(side) or []
                if each and len(each) == len(rates):
                    return statistics.median(pct_of(x, flops_per_tok, g) for x, g in zip(rates, each))
                return pct_of(q[f"{side}_median"], flops_per_tok, roof)

            for B, T in PREFILL:
                key = f"{B}x{T}"
                q = P["prefill"].get(key)
                if not q:
                    continue
                r = q.get("ratio_median")
                per_tok = fwd_flops(c, B, T) / (B * T)
                pl, pe = pcts(q, "lumen", per_tok, roof_l), pcts(q, "eager", per_tok, roof_e)
                target, st = "—", "—"
                if key != "1x128":
                    target, ok = "≥1.0×", None if r is None else r >= 1.0
                    if key == "8x128" and s == "110M":
                        target += ", ≥60% roofline"
                        if ok is not None and pl is not None and pl < 60.0:
                            misses.append(f"{s} prefill {key} roofline")
                            st = "**MISS**" + (" (roofline)" if ok else " (ratio, roofline)")
                            if not ok:
                                misses.append(f"{s} prefill {key}")
                        else:
                            st = status(ok, f"{s} prefill {key}")
                    else:
                        st = status(ok, f"{s} prefill {key}")
                w(f"| {s} | prefill {B}×{T} (tok/s) | {fmt(q['lumen_median'])} | {fmt(q['eager_median'])} | "
                  f"{paired.fmt_ratio(q)} | {pct(pl)} | {pct(pe)} | {target} | {st} |")
            d = P["decode"]
            r = d.get("ratio_median")
            w(f"| {s} | decode {PROMPT_LEN}+{NEW_TOKENS}, batch 1, greedy, KV cache (tok/s) | {fmt(d['lumen_median'])} "
              f"| {fmt(d['eager_median'])} | {paired.fmt_ratio(d)} | | | ≥2× | {status(None if r is None else r >= 2.0, f'{s} decode')} |")
            key = f"{TRAIN[0]}x{TRAIN[1]}"
            q = P["fwd_bwd"][key]
            r = q.get("ratio_median")
            per_tok = fwd_bwd_flops(c, *TRAIN) / (TRAIN[0] * TRAIN[1])
            pl, pe = pcts(q, "lumen", per_tok, roof_l), pcts(q, "eager", per_tok, roof_e)
            w(f"| {s} | fwd+bwd to input_embeds {TRAIN[0]}×{TRAIN[1]} (tok/s) | {fmt(q['lumen_median'])} "
              f"| {fmt(q['eager_median'])} | {paired.fmt_ratio(q)} | {pct(pl)} | {pct(pe)} | ≥1.0× "
              f"| {status(None if r is None else r >= 1.0, f'{s} fwd+bwd')} |")
        key = f"{TRAIN[0]}x{TRAIN[1]}"
        ov = res.get(L, "hooks", key, "overhead_median")
        n = res.get(L, "hooks", key, "n_cached")
        w(f"| {s} | caching hook_embed + every hook_resid_post ({n} tensors) vs no hooks, {TRAIN[0]}×{TRAIN[1]} "
          f"| {'—' if ov is None else f'{100 * ov:+.1f}%'} | | | | | ≤5% "
          f"| {status(None if ov is None else ov <= 0.05, f'{s} hook caching')} |")
        lc, lw = res.get(L, "load", "cold_ms"), res.get(L, "load", "warm_median_ms")
        ec, ew = res.get(E, "load", "cold_ms"), res.get(E, "load", "warm_median_ms")
        if lc is not None:
            big = s == "110M"
            st = status(lc <= 100 and lw <= 100, f"{s} load") if big else "—"
            w(f"| {s} | load, cold / warm (ms) | {lc:.1f} / {lw:.1f} | {fmt(ec)} / {fmt(ew)} | | | "
              f"| {'≤100 ms' if big else '—'} | {st} |")
            lf, ef = res.get(L, "load", "first_forward_cold_ms"), res.get(E, "load", "first_forward_cold_ms")
            w(f"| {s} | first 1-token forward after the cold load: weights paged in (ms) | {fmt(lf)} | {fmt(ef)} "
              "| | | | — | — |")
    w("")
    loads = [(s, res.pairs[s].get("load_start"), res.pairs[s].get("load_end")) for s in shapes if s in res.pairs]
    if loads:
        w("Load average (1 min) at the start / end of each shape's rounds: "
          + ", ".join(f"{s} {a} / {b}" for s, a, b in loads) + ".")
        w("")

    w("## OpenMP wait policy")
    w("")
    w("PASSIVE vs the default (OMP_WAIT_POLICY unset, LUMEN_KEEP_OMP_POLICY=1), each pair run back to back, "
      "at torch's default intra-op thread count and at one thread per core. Slowdown = PASSIVE / default "
      "throughput (>1: the default is slower).")
    w("")
    w("| shape | workload | intra-op threads | lumen PASSIVE | lumen default | lumen slowdown | eager PASSIVE | eager default | eager slowdown |")
    w("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for s in shapes:
        for t in sorted({k[3] for k in res.runs if k[1] == s and k[4] == "omp"}):
            n_thr = next((r.get("intra_op_threads") for k, r in res.runs.items() if k[1] == s and k[3] == t and k[4] == "omp"), t)
            label = f"{n_thr} (torch default)" if t == 0 else f"{t}"
            for name, fn in ((f"prefill {TRAIN[0]}×{TRAIN[1]} (tok/s)", lambda k: res.tok_s(k, "prefill", f"{TRAIN[0]}x{TRAIN[1]}")),
                             (f"decode, steady {WINDOW} tokens (tok/s)", lambda k: res.decode_tok_s(k, window=True))):
                cells = []
                for impl in ("lumen", "eager"):
                    p, d = fn((impl, s, "passive", t, "omp")), fn((impl, s, "default", t, "omp"))
                    cells += [fmt(p), fmt(d), times(ratio(p, d))]
                if any(x != "—" for x in cells):
                    w(f"| {s} | {name} | {label} | " + " | ".join(cells) + " |")
    w("")

    w("## Diagnostics")
    w("")
    w("One-row products: torch::linear (a GEMM with M = 1, what eager's decode step calls), torch::mv "
      "(BLAS gemv) and lumen's two-thread gemv (src/base/gemv.h, what lumen's decode step calls) on the "
      "same weights, ms per call (best of the repetitions, weights warm in cache), lumen's process.")
    w("")
    w("| shape | matrix | linear (ms) | mv (ms) | lumen gemv (ms) | lumen gemv GB/s |")
    w("|---|---|---:|---:|---:|---:|")
    for s in shapes:
        for name, g in (res.get(("lumen", s, "passive", 0, "main"), "gemv") or {}).items():
            own = f"{g['lumen_gemv_ms']:.3f} | {g['gbytes_per_s']:.1f}" if "lumen_gemv_ms" in g else "— | —"
            w(f"| {s} | {name} | {g['linear_ms']:.3f} | {g['mv_ms']:.3f} | {own} |")
    w("")
    w("Same numbers on both sides (1×128 prefill, last position; greedy decode):")
    w("")
    w("| shape | argmax lumen / eager | logit sum lumen / eager | decoded tokens identical |")
    w("|---|---|---|---|")
    for s in shapes:
        L, E = ("lumen", s, "passive", 0, "main"), ("eager", s, "passive", 0, "main")
        lc, ec = res.get(L, "check"), res.get(E, "check")
        toks = (res.pairs.get(s) or {}).get("decode", {}).get("tokens", {})
        lt, et = toks.get("lumen"), toks.get("eager")
        if not lc or not ec:
            continue
        if lt is None or et is None:
            same = "—"
        elif lt == et:
            same = f"yes ({len(lt)})"
        else:
            first = next((i for i, (a, b) in enumerate(zip(lt, et)) if a != b), min(len(lt), len(et)))
            same = f"no (first difference at {first})"
        w(f"| {s} | {lc['argmax_last']} / {ec['argmax_last']} | {lc['logits_last_sum']:.6g} / {ec['logits_last_sum']:.6g} | {same} |")
    w("")
    w("**Targets missed:** " + (", ".join(dict.fromkeys(misses)) if misses else "none"))
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


# ---- the CUDA report (bench/run_cuda.sh) ------------------------------------------------------------

CUDA_RUN = re.compile(r"^(lumen|eager)-(.+)-(f32|bf16)-r(\d+)\.json$")


def report_cuda(args):
    """One table from run_cuda.sh's IMPL-SHAPE-DTYPE-rROUND.json files: per shape and dtype, the
    median over rounds of the per-round throughput ratios lumen/eager (the two processes of a round ran
    back to back), lumen's hook-caching overhead and its prefill 8x128 as % of its own roofline."""
    runs = {}  # (shape, dtype) -> round -> impl -> the run's JSON
    for name in sorted(os.listdir(args.results)):
        mt = CUDA_RUN.match(name)
        if not mt:
            continue
        with open(os.path.join(args.results, name)) as f:
            part = json.load(f)
        impl, shape, dtype, rnd = mt.groups()
        runs.setdefault((shape, dtype), {}).setdefault(int(rnd), {})[impl] = part
    meta = {}
    if args.meta and os.path.exists(args.meta):
        with open(args.meta) as f:
            meta = json.load(f)
    order = {"15M": 0, "42M": 1, "110M": 2, "1B": 3}
    keys = sorted(runs, key=lambda k: (order.get(k[0], 9), k[0], k[1] != "f32", k[1]))
    every = [r for k in keys for rr in runs[k].values() for r in rr.values()]
    eager_any = next((r for r in every if r.get("impl") == "eager"), {})
    lumen_any = next((r for r in every if r.get("impl") == "lumen"), {})
    train = f"{TRAIN[0]}x{TRAIN[1]}"

    def prefill(r, B, T):
        t = ((r or {}).get("prefill") or {}).get(f"{B}x{T}", {}).get("median")
        return B * T / t if t else None

    def decode(r):
        d = (r or {}).get("decode")
        return d["new_tokens"] / d["median"] if d and d.get("median") else None

    def fwd_bwd(r):
        t = ((r or {}).get("fwd_bwd") or {}).get(train, {}).get("median")
        return TRAIN[0] * TRAIN[1] / t if t else None

    def ratio_cell(rounds, fn):
        """'1.23× (1.10–1.31)': the median and range of the per-round ratios lumen/eager."""
        rs = []
        for rr in rounds.values():
            a, b = fn(rr.get("lumen")), fn(rr.get("eager"))
            if a and b:
                rs.append(a / b)
        return paired.fmt_ratio({"ratio_median": statistics.median(rs), "ratio_min": min(rs), "ratio_max": max(rs)}) if rs else "—"

    lines = []
    w = lines.append
    w("# lumen vs PyTorch eager on CUDA")
    w("")
    head = []
    if eager_any.get("device_name"):
        head.append(f"GPU: {eager_any['device_name']}")
    elif "device" not in meta:
        head.append(f"device: {eager_any.get('device') or lumen_any.get('device') or '?'}")
    if eager_any:
        head.append(f"eager: torch {eager_any.get('torch')}" + (f" (CUDA {eager_any['cuda']})" if eager_any.get("cuda") else ""))
    if lumen_any:
        head.append(f"lumen: libtorch {lumen_any.get('torch')}")
    head += [f"{k}: {v}" for k, v in meta.items()]
    w(" · ".join(head))
    w("")
    w("Each round runs `bench_engine run` and `baseline_engine.py run` with the same --device/--dtype back to "
      "back, alternating which goes first. A process times each workload as the median of its calls, each "
      "ending with a device synchronize. Cells: the median over rounds of the per-round throughput ratio "
      "lumen/eager (>1: lumen faster) with its min–max. Hook caching: lumen's extra time for an 8×128 forward "
      "that caches hook_embed and every hook_resid_post, over the same forward without hooks (median over "
      "rounds). % roofline: lumen's 8×128 prefill model FLOP/s over the best GEMM rate (1024-row products of "
      "the model's shapes, at the same dtype) that its process measured. Same: the argmax of the 1×128 "
      "prefill's last position, and the greedy decode's tokens.")
    w("")
    w("| shape | dtype | prefill 1×128 | prefill 8×128 | prefill 64×16 | decode 16+128 | fwd+bwd 8×128 "
      "| hook caching (lumen) | lumen 8×128 % roofline | same argmax / decode |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for shape, dtype in keys:
        rounds = runs[(shape, dtype)]
        cells = [ratio_cell(rounds, lambda r, B=B, T=T: prefill(r, B, T)) for B, T in PREFILL]
        cells += [ratio_cell(rounds, decode), ratio_cell(rounds, fwd_bwd)]
        lus = [rr["lumen"] for _, rr in sorted(rounds.items()) if "lumen" in rr]
        ov = [r["hooks"][train]["overhead_median"] for r in lus if "hooks" in r]
        cells.append(f"{100 * statistics.median(ov):+.1f}%" if ov else "—")
        pct, roofs = [], []
        for r in lus:
            tok_s, roof = prefill(r, 8, 128), (r.get("roofline") or {}).get("gflops")
            if tok_s and roof and "config" in r:
                pct.append(100.0 * tok_s * fwd_flops(r["config"], 8, 128) / (8 * 128) / 1e9 / roof)
                roofs.append(roof)
        cells.append(f"{statistics.median(pct):.0f}% of {statistics.median(roofs) / 1e3:.3g} TFLOP/s" if pct else "—")
        last = rounds[max(rounds)]
        lc, ec = (last.get("lumen") or {}).get("check"), (last.get("eager") or {}).get("check")
        lt = ((last.get("lumen") or {}).get("decode") or {}).get("tokens")
        et = ((last.get("eager") or {}).get("decode") or {}).get("tokens")
        same = "—"
        if lc and ec:
            same = "yes" if lc["argmax_last"] == ec["argmax_last"] else f"{lc['argmax_last']} vs {ec['argmax_last']}"
        if lt is not None and et is not None:
            first = next((i for i, (a, b) in enumerate(zip(lt, et)) if a != b), None)
            if first is None and len(lt) != len(et):
                first = min(len(lt), len(et))
            same += f" / {'yes' if first is None else f'from token {first}'}"
        cells.append(same)
        n, want = sum(1 for rr in rounds.values() if "lumen" in rr and "eager" in rr), meta.get("rounds", 0)
        w(f"| {shape} | {dtype}{f' ({n} of {want} rounds)' if n < want else ''} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--shape", default="")
    r.add_argument("--reps", type=int, default=5)
    r.add_argument("--decode-reps", type=int, default=3)
    r.add_argument("--only", default=ALL_SECTIONS)
    r.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    r.add_argument("--prefill-shapes", default=",".join(f"{b}x{t}" for b, t in PREFILL))
    r.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    r.add_argument("--device", default=None, help="cpu (default), cuda or cuda:N")
    r.add_argument("--dtype", default=None, help="f32 (default) or bf16")
    q = sub.add_parser("pair")
    q.add_argument("--lumen", required=True, help="the bench_engine binary")
    q.add_argument("--model", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--shape", default="")
    q.add_argument("--rounds", type=int, default=5)
    q.add_argument("--decode-rounds", type=int, default=3)
    q.add_argument("--prefill-shapes", default=",".join(f"{b}x{t}" for b, t in PREFILL))
    q.add_argument("--threads", type=int, default=0, help="torch intra-op threads, both sides (0: torch's default)")
    q.add_argument("--min-round-s", type=float, default=1.0, help="a round's calls take at least this long on the faster side")
    q.add_argument("--max-calls", type=int, default=32)
    q.add_argument("--lumen-only", action="store_true", help="no eager side (no torch here)")
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--meta", default="")
    c = sub.add_parser("report-cuda", help="the table of bench/run_cuda.sh")
    c.add_argument("--results", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--meta", default="")
    args = ap.parse_args()
    {"run": run, "pair": pair, "report": report, "report-cuda": report_cuda}[args.cmd](args)


if __name__ == "__main__":
    main()
