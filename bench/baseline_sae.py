#!/usr/bin/env python3
"""The PyTorch-eager side of the SAE benchmarks (bench/run_sae.sh), and their report.

    baseline_sae.py pair --lumen BENCH_SAE --lumen-model M --model HF_DIR --corpus C --work DIR --sae DIR...
        --out FILE.json [--rounds R] [--min-round-s S] [--store-rows N] [--harvest-tokens N]
    baseline_sae.py report --results FILE.json [--md FILE.md]

`pair` starts `bench_sae serve` and runs every workload in R rounds, each timing lumen's measurement
(asked of bench_sae) and eager's (here) back to back, alternating which goes first (bench/paired.py).
Eager does, in plain PyTorch, what bench_sae does in lumen:
  update   the TopK training step train_sae runs (MSE + AuxK when latents are dead, Adam, unit-norm
           decoder rows with the radial gradient removed, dead-latent counters, progress sums), on the
           activations bench_sae saved;
  store    the forward pass to blocks.2.hook_resid_post (stopping there, and through the whole model);
  harvest  a loop over the windows bench_sae saved that encodes every SAE and keeps the same statistics
           (density, moments, max, histogram) and the same top-K contexts per feature, in memory.
The model is baseline_engine.py's eager llama on bench_sae's HF export of stories260K.
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paired  # noqa: E402
from baseline_engine import Llama, load_safetensors  # noqa: E402

# name, d_in, d_sae, k, rows: the same table as bench_sae.cpp's kShapes.
SHAPES = [
    ("stories260K L2, 512 latents, batch 1024", 64, 512, 16, 1024),
    ("stories260K L2, 512 latents, batch 4096", 64, 512, 16, 4096),
    ("d_in 512, 4096 latents, batch 4096 (synthetic rows)", 512, 4096, 32, 4096),
]
DEAD_AFTER = 200000
BOS = 1
WARMUP_STEPS = 3  # bench_sae's kWarmupSteps


def blocks(m, x, n_layers, capture=()):
    """x [B,T,D] through the first n_layers blocks of baseline_engine's llama; returns the residual
    stream and {layer: resid_post} for the captured layers."""
    import torch
    import torch.nn.functional as F
    B, T, _ = x.shape
    H, K, E = m.H, m.K, m.E
    cos, sin = m.cos[:T], m.sin[:T]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    out = {}
    for l in range(n_layers):
        w = m.layers[l]
        h = m.rms_norm(x, w["ln1"])
        q = F.linear(h, w["wq"]).view(B, T, H, E).transpose(1, 2)
        k = F.linear(h, w["wk"]).view(B, T, K, E).transpose(1, 2)
        v = F.linear(h, w["wv"]).view(B, T, K, E).transpose(1, 2)
        q = q * cos + m.rotate_half(q) * sin
        k = k * cos + m.rotate_half(k) * sin
        if H != K:
            k = k.repeat_interleave(H // K, dim=1)
            v = v.repeat_interleave(H // K, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(E)
        z = s.masked_fill(~mask, float("-inf")).softmax(-1) @ v
        x = x + F.linear(z.transpose(1, 2).reshape(B, T, H * E), w["wo"])
        h = m.rms_norm(x, w["ln2"])
        x = x + F.linear(F.silu(F.linear(h, w["wg"])) * F.linear(h, w["wu"]), w["wd"])
        if l in capture:
            out[l] = x
    return x, out


class EagerUpdate:
    """One shape's training run in eager PyTorch, initialised as bench_sae's UpdateRun (train_sae's
    fresh start), after WARMUP_STEPS untimed steps. steps(n) runs n more."""

    def __init__(self, acts, d_in, d_sae, k, rows, total_steps):
        import torch
        g = torch.Generator().manual_seed(0)
        W_dec = torch.randn(d_sae, d_in, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        W_enc = W_dec.t().clone()
        b_enc = torch.zeros(d_sae)
        self.acts, self.rows, self.k, self.next = acts, rows, k, 0
        self.n_batches = acts.shape[0] // rows
        x0 = self.batch(0)
        self.scale = math.sqrt(d_in) / x0.norm(dim=1).mean().item()
        b_dec = x0.mean(0) * self.scale
        self.params = [p.requires_grad_() for p in (W_enc, b_enc, W_dec, b_dec)]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.since_fired = torch.zeros(d_sae, dtype=torch.long)
        self.total = total_steps + WARMUP_STEPS
        self.warm = max(1, int(0.02 * self.total))
        self.decay_start = self.total - int(0.2 * self.total)
        self.aux_k = max(1, d_in // 2)
        self.sums = [0.0] * 4  # loss, L0, squared error, variance
        self.steps(WARMUP_STEPS)

    def batch(self, i):
        j = i % self.n_batches
        return self.acts[j * self.rows:(j + 1) * self.rows]

    def steps(self, n):
        """n training steps; returns their mean loss."""
        total = 0.0
        for _ in range(n):
            total += self.step(self.next, self.batch(self.next))
            self.next += 1
        return total / max(1, n)

    def step(self, i, x):
        import torch
        W_enc, b_enc, W_dec, b_dec = self.params
        scale, k, since_fired = self.scale, self.k, self.since_fired
        b1, b2, eps, lr = 0.9, 0.999, 1e-8, 2e-3
        if i < self.warm:
            lr *= (i + 1) / self.warm
        if i >= self.decay_start:
            lr *= (self.total - i) / max(1, self.total - self.decay_start)
        pre = (x * scale - b_dec) @ W_enc + b_enc
        top = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        recons = (f @ W_dec + b_dec) / scale
        err = (recons - x) * scale
        loss = err.pow(2).sum(-1).mean()
        dead = since_fired >= DEAD_AFTER
        n_dead = int(dead.sum())
        if n_dead > 0:
            ka = min(self.aux_k, n_dead)
            t = pre.masked_fill(~dead, float("-inf")).topk(ka, dim=-1)
            e_hat = torch.zeros_like(pre).scatter(-1, t.indices, t.values.relu()) @ W_dec
            e = -err.detach()
            aux = (e_hat - e).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp_min(1e-12)
            loss = loss + (1 / 32) * min(1.0, n_dead / ka) * aux
        grads = list(torch.autograd.grad(loss, self.params))
        with torch.no_grad():
            grads[2] = grads[2] - (grads[2] * W_dec).sum(1, keepdim=True) * W_dec
            bc1, bc2 = 1 - b1 ** (i + 1), 1 - b2 ** (i + 1)
            for p, gr, mi, vi in zip(self.params, grads, self.m, self.v):
                mi.mul_(b1).add_(gr, alpha=1 - b1)
                vi.mul_(b2).addcmul_(gr, gr, value=1 - b2)
                p.addcdiv_(mi, (vi / bc2).sqrt_().add_(eps), value=-lr / bc1)
            W_dec.div_(W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
            since_fired.add_(x.shape[0]).masked_fill_((f > 0).any(0), 0)
            # The progress sums train_sae keeps (it reports them every log_every steps).
            sums = (loss.item(), (f > 0).sum(-1).double().mean().item(), err.pow(2).sum().item(),
                    ((x - x.mean(0)) * scale).pow(2).sum().item())
            self.sums = [a + b for a, b in zip(self.sums, sums)]
        return sums[0]


def bench_forward(m, windows, stop, rows, cursor):
    """rows/s of the forward over 16 windows of 128 tokens (to layer 3, or through the model and
    the unembedding), continuing from window cursor[0] as bench_sae's time_forward does."""
    import torch
    done = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        while done < rows:
            toks = windows[cursor[0] % (windows.shape[0] - 16):][:16]
            cursor[0] += 16
            x = torch.nn.functional.embedding(toks, m.embed)
            x, _ = blocks(m, x, 3 if stop else m.L)
            if not stop:
                torch.nn.functional.linear(m.rms_norm(x, m.norm), m.head)
            x.reshape(-1, x.shape[-1])[(toks != BOS).reshape(-1)]  # what a store keeps
            done += toks.numel() - 16  # BOS rows are not counted
    return done / (time.perf_counter() - t0)


def load_windows(path, name):
    """int64 token windows that bench_sae saved (baseline_engine's reader only knows floats)."""
    import numpy as np
    import struct
    import torch
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        e = json.loads(f.read(n))[name]
        f.seek(8 + n + e["data_offsets"][0])
        raw = f.read(e["data_offsets"][1] - e["data_offsets"][0])
    assert e["dtype"] == "I64", path + ": windows must be I64"
    return torch.from_numpy(np.frombuffer(raw, dtype=np.int64).reshape(e["shape"]).copy())


def load_sae(folder):
    with open(os.path.join(folder, "cfg.json")) as f:
        cfg = json.load(f)
    w = load_safetensors(os.path.join(folder, "sae_weights.safetensors"))
    layer = int(cfg["hook_name"].split(".")[1])
    return {"layer": layer, "k": int(cfg.get("k") or cfg["activation_fn_kwargs"]["k"]),
            "b_dec_in": bool(cfg.get("apply_b_dec_to_input", True)), **{n: w[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}}


def bench_harvest(m, windows, saes, batch=32, top_k=20, width=32):
    import torch
    T = windows.shape[1]
    before = width * 3 // 4
    edges = torch.tensor([1e-3 * 10 ** (i / 10) for i in range(61)], dtype=torch.float64)
    state = []
    for s in saes:
        F_ = s["W_enc"].shape[1]
        state.append({"tokens": 0, "nonzero": torch.zeros(F_, dtype=torch.long), "sum": torch.zeros(F_, dtype=torch.float64),
                      "sum_sq": torch.zeros(F_, dtype=torch.float64), "max": torch.zeros(F_, dtype=torch.float64),
                      "hist": torch.zeros(F_ * 62, dtype=torch.long),
                      "top_val": torch.full((F_, top_k), float("-inf")), "top_win": torch.full((F_, top_k), -1, dtype=torch.long),
                      "top_pos": torch.zeros(F_, top_k, dtype=torch.long),
                      "ctx_tok": torch.zeros(F_, top_k, width, dtype=torch.int32), "ctx_act": torch.zeros(F_, top_k, width)})
    deepest = max(s["layer"] for s in saes) + 1
    tokens = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for w0 in range(0, windows.shape[0], batch):
            toks = windows[w0:w0 + batch]
            B = toks.shape[0]
            gid = torch.arange(w0, w0 + B)
            _, resid = blocks(m, torch.nn.functional.embedding(toks, m.embed), deepest, {s["layer"] for s in saes})
            valid = toks != BOS
            n_valid = int(valid.sum())
            tokens += n_valid
            for s, st in zip(saes, state):
                x = resid[s["layer"]].reshape(B * T, -1)
                pre = (x - s["b_dec"] if s["b_dec_in"] else x) @ s["W_enc"] + s["b_enc"]
                top = pre.topk(s["k"], dim=-1)
                a = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu()).view(B, T, -1)
                a = a.masked_fill(~valid.unsqueeze(-1), 0.0)
                F_ = a.shape[-1]
                fired = a > 0
                vals = a[fired].double()
                feat = fired.reshape(-1, F_).nonzero()[:, 1]
                st["tokens"] += n_valid
                st["nonzero"].index_add_(0, feat, torch.ones_like(feat))
                st["sum"].index_add_(0, feat, vals)
                st["sum_sq"].index_add_(0, feat, vals * vals)
                st["max"] = torch.maximum(st["max"], a.amax((0, 1)).double())
                st["hist"].index_add_(0, torch.bucketize(vals, edges, right=True) + feat * 62, torch.ones_like(feat))
                # Top-K contexts: each window's strongest position per feature, merged by value.
                wmax, wpos = a.max(1)  # [B,F]
                cand = torch.where(wmax > 0, wmax, torch.full_like(wmax, float("-inf"))).t()  # [F,B]
                val = torch.cat([st["top_val"], cand], 1)
                idx = val.topk(top_k, dim=1).indices  # [F,K]
                win = torch.cat([st["top_win"], gid.expand(F_, B)], 1).gather(1, idx)
                pos = torch.cat([st["top_pos"], wpos.t()], 1).gather(1, idx)
                start = (wpos.t() - before).clamp(0, T - width)  # [F,B]
                t_idx = start.unsqueeze(-1) + torch.arange(width)  # [F,B,W]
                ctx_tok = toks.to(torch.int32).reshape(-1)[(torch.arange(B).view(1, B, 1) * T + t_idx).reshape(-1)].view(F_, B, width)
                row = (torch.arange(B).view(1, B, 1) * T + t_idx) * F_ + torch.arange(F_).view(F_, 1, 1)
                ctx_act = a.reshape(-1)[row.reshape(-1)].view(F_, B, width)
                idx3 = idx.unsqueeze(-1).expand(F_, top_k, width)
                st["ctx_tok"] = torch.cat([st["ctx_tok"], ctx_tok], 1).gather(1, idx3)
                st["ctx_act"] = torch.cat([st["ctx_act"], ctx_act], 1).gather(1, idx3)
                st["top_val"], st["top_win"], st["top_pos"] = val.gather(1, idx), win, pos
    secs = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": secs, "tok_s": tokens / secs, "n_saes": len(saes),
            "top_max": [float(st["top_val"][:, 0].max()) for st in state]}


def peak_rss_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pair(args):
    """Every workload in paired rounds with `bench_sae serve` (bench/paired.py); one JSON out."""
    import torch
    torch.manual_seed(0)
    R, store_rows = args.rounds, args.store_rows
    argv = [args.lumen, "serve", "--model", args.lumen_model, "--corpus", args.corpus, "--work", args.work,
            "--harvest-tokens", str(args.harvest_tokens)]
    for d in args.sae:
        argv += ["--sae", d]
    lumen = paired.Server(argv)  # saves the activations and windows that are loaded next
    m = Llama(args.model)
    saved = load_safetensors(os.path.join(args.work, "acts.safetensors"))
    acts, synth = saved["acts"].clone(), saved["synthetic"].clone()
    hw = load_windows(os.path.join(args.work, "windows.safetensors"), "harvest")  # [W, 64]
    fw = load_windows(os.path.join(args.work, "windows.safetensors"), "forward")  # [W, 128]
    saes = [load_sae(d) for d in args.sae]
    res = {"model": lumen.ready["ready"]["model"], "torch": torch.__version__, "rounds": R,
           "torch_threads": {"lumen": lumen.ready["ready"]["torch_threads"], "eager": torch.get_num_threads()},
           "load_start": paired.load_now(), "update": []}
    t_start = time.perf_counter()

    max_steps = 64  # per round; the LR schedule of both sides spans R * max_steps steps
    for i, (name, d_in, d_sae, k, rows) in enumerate(SHAPES):
        # One untimed step each after the warm-up sizes the rounds: as many steps as take
        # --min-round-s on the faster side.
        total = R * max_steps + 1
        first = lumen.call("update", shape=i, steps=1, total=total)["seconds"]
        run = EagerUpdate(acts if d_in == 64 else synth, d_in, d_sae, k, rows, total)
        t0 = time.perf_counter()
        run.steps(1)
        first = min(first, time.perf_counter() - t0)
        steps = max(1, min(max_steps, math.ceil(args.min_round_s / first)))
        print(f"baseline_sae: update, {name}: {R} rounds of {steps} steps", file=sys.stderr, flush=True)

        def eager_update(r):
            t0 = time.perf_counter()
            run.steps(steps)
            return steps * rows / (time.perf_counter() - t0)

        lu, ea = paired.rounds(R, lambda r: lumen.call("update", shape=i, steps=steps, total=total)["rows_s"], eager_update)
        res["update"].append({"name": name, "rows": rows, "steps_per_round": steps, **paired.summary(lu, ea)})

    res["store"] = {"rows_per_round": store_rows}
    cursor = [0]
    for stop in (True, False):
        key = "stop" if stop else "full"
        print(f"baseline_sae: activation store and forward, {key}: {R} rounds of {store_rows} rows", file=sys.stderr, flush=True)

        def lumen_store(r):
            return {"store": lumen.call("store", stop=stop, rows=store_rows)["rows_s"],
                    "forward": lumen.call("forward", stop=stop, rows=store_rows)["rows_s"]}

        lu, ea = paired.rounds(R, lumen_store, lambda r: bench_forward(m, fw, stop, store_rows, cursor))
        # store_vs_forward pairs lumen's store (as "lumen") with lumen's forward (as "eager").
        res["store"][key] = {"forward": paired.summary([x["forward"] for x in lu], ea),
                             "store_vs_forward": paired.summary([x["store"] for x in lu], [x["forward"] for x in lu])}

    print(f"baseline_sae: harvest, {len(saes)} SAEs, {hw.shape[0]} windows: {R} rounds", file=sys.stderr, flush=True)
    lh = []

    def lumen_harvest(r):
        # Its default (one fold thread per core) and one thread, eager's count: the second core's
        # share of the ratio depends on what else runs on the machine.
        lh.append({"default": lumen.call("harvest"), "one_thread": lumen.call("harvest", threads=1)})
        return lh[-1]

    eh = []

    def eager_harvest(r):
        eh.append(bench_harvest(m, hw, saes))
        return eh[-1]["tok_s"]

    lu, ea = paired.rounds(R, lumen_harvest, eager_harvest)
    res["harvest"] = {"n_saes": len(saes), "tokens": lh[0]["default"]["tokens"], "eager_tokens": eh[0]["tokens"],
                      "eager_peak_rss_mb": peak_rss_mb(),
                      **paired.summary([x["default"]["tok_s"] for x in lu], ea),
                      "one_thread": paired.summary([x["one_thread"]["tok_s"] for x in lu], ea)}
    lumen.close()
    res["load_end"] = paired.load_now()
    res["seconds"] = time.perf_counter() - t_start
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


def report(args):
    with open(args.results) as f:
        res = json.load(f)
    out = []
    w = out.append
    fr = paired.fmt_ratio

    def fmt(x):
        return "—" if x is None else f"{x:,.0f}"

    w("# SAE and feature-harvest benchmark\n")
    th = res["torch_threads"]
    w(f"model: {res['model']} · torch intra-op threads: lumen {th['lumen']}, eager {th['eager']} · both OMP_WAIT_POLICY=PASSIVE · "
      f"{res['rounds']} paired rounds per workload, lumen and eager alternating · load average {res['load_start']} at the start, "
      f"{res['load_end']} at the end · {res['seconds']:.0f} s\n")
    w("Medians over the rounds; lumen/eager is the median of the per-round ratios, with their range (min–max). "
      "Status judges the median ratio.\n")
    w("## SAE training update (TopK, the step train_sae runs), rows/s\n")
    w("| shape | lumen | eager | lumen/eager (range) | target | status |")
    w("|---|---:|---:|---:|---|---|")
    for u in res["update"]:
        r = u.get("ratio_median")
        w(f"| {u['name']} | {fmt(u['lumen_median'])} | {fmt(u['eager_median'])} | {fr(u)} | ≥1.0× | "
          f"{'PASS' if r and r >= 1.0 else '**MISS**'} |")
    st, fu = res["store"]["stop"], res["store"]["full"]
    w("\n## Activation store at blocks.2.hook_resid_post (5-layer model), rows/s\n")
    w("| what | stop_at_layer | full model | stop / full |")
    w("|---|---:|---:|---:|")
    for label, a, b in (("lumen ActivationStore (forward + buffer + shuffle)", st["store_vs_forward"]["lumen_median"],
                         fu["store_vs_forward"]["lumen_median"]),
                        ("lumen forward only", st["forward"]["lumen_median"], fu["forward"]["lumen_median"]),
                        ("eager forward only", st["forward"]["eager_median"], fu["forward"]["eager_median"])):
        w(f"| {label} | {fmt(a)} | {fmt(b)} | {a / b:.2f}× |")
    w(f"| lumen forward / eager forward (range) | {fr(st['forward'])} | {fr(fu['forward'])} | |")
    w(f"| lumen store / lumen forward (range) | {fr(st['store_vs_forward'])} | {fr(fu['store_vs_forward'])} | |")
    share = st["store_vs_forward"]["ratio_median"]
    w(f"\nThe store serves rows at {100 * share:.0f}% of the bare forward pass's rate (stopping at the layer): "
      f"{'the forward dominates' if share >= 0.7 else 'buffering costs a noticeable share'}.\n")
    h = res["harvest"]
    r = h.get("ratio_median")
    w("## Feature harvest, every SAE at once, tokens/s\n")
    w("| SAEs | tokens per round | lumen fold threads | lumen (SQLite store included) | eager (in memory) | lumen/eager (range) | target | status |")
    w("|---:|---:|---|---:|---:|---:|---|---|")
    w(f"| {h['n_saes']} | {h['tokens']:,} | one per core (default) | {fmt(h['lumen_median'])} | {fmt(h['eager_median'])} | {fr(h)} "
      f"| ≥1.5× | {'PASS' if r and r >= 1.5 else '**MISS**'} |")
    one = h.get("one_thread")
    if one:
        w(f"| {h['n_saes']} | {h['tokens']:,} | 1 (eager's count) | {fmt(one['lumen_median'])} | {fmt(one['eager_median'])} "
          f"| {fr(one)} | — | — |")
    text = "\n".join(out) + "\n"
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("pair")
    r.add_argument("--lumen", required=True, help="the bench_sae binary")
    r.add_argument("--lumen-model", required=True, help="the model as lumen loads it")
    r.add_argument("--model", required=True, help="bench_sae's HF export, for the eager llama")
    r.add_argument("--corpus", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--sae", action="append", default=[])
    r.add_argument("--out", required=True)
    r.add_argument("--rounds", type=int, default=5)
    r.add_argument("--min-round-s", type=float, default=1.0, help="update steps per round: as many as take this long")
    r.add_argument("--store-rows", type=int, default=32768, help="rows per round of the store and forward")
    r.add_argument("--harvest-tokens", type=int, default=30000, help="tokens per round of the harvest")
    q = sub.add_parser("report")
    q.add_argument("--results", required=True)
    q.add_argument("--md")
    args = p.parse_args()
    pair(args) if args.cmd == "pair" else report(args)


if __name__ == "__main__":
    main()
