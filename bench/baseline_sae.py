#!/usr/bin/env python3
"""The PyTorch-eager side of the SAE benchmarks (bench/run_sae.sh).

    baseline_sae.py run --model HF_DIR --work DIR --sae DIR... --out FILE.json [--steps N]
    baseline_sae.py report --lumen FILE.json --eager FILE.json

`run` times, in plain eager PyTorch, what bench_sae times in lumen:
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
from baseline_engine import Llama, load_safetensors  # noqa: E402

# name, d_in, d_sae, k, rows: the same table as bench_sae.cpp's kShapes.
SHAPES = [
    ("stories260K L2, 512 latents, batch 1024", 64, 512, 16, 1024),
    ("stories260K L2, 512 latents, batch 4096", 64, 512, 16, 4096),
    ("d_in 512, 4096 latents, batch 4096 (synthetic rows)", 512, 4096, 32, 4096),
]
DEAD_AFTER = 200000
BOS = 1


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


def bench_update(acts, d_in, d_sae, k, rows, steps):
    import torch
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.t().clone()
    b_enc = torch.zeros(d_sae)
    n_batches = acts.shape[0] // rows
    batch = lambda i: acts[(i % n_batches) * rows:(i % n_batches + 1) * rows]  # noqa: E731
    x0 = batch(0)
    scale = math.sqrt(d_in) / x0.norm(dim=1).mean().item()
    b_dec = x0.mean(0) * scale
    params = [p.requires_grad_() for p in (W_enc, b_enc, W_dec, b_dec)]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    total = steps + 3
    warm = max(1, int(0.02 * total))
    decay_start = total - int(0.2 * total)
    aux_k = max(1, d_in // 2)
    b1, b2, eps, lr0 = 0.9, 0.999, 1e-8, 2e-3
    sums = [0.0, 0.0, 0.0, 0.0]

    def step(i, x):
        lr = lr0
        if i < warm:
            lr *= (i + 1) / warm
        if i >= decay_start:
            lr *= (total - i) / max(1, total - decay_start)
        pre = (x * scale - b_dec) @ W_enc + b_enc
        top = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        recons = (f @ W_dec + b_dec) / scale
        err = (recons - x) * scale
        loss = err.pow(2).sum(-1).mean()
        dead = since_fired >= DEAD_AFTER
        n_dead = int(dead.sum())
        if n_dead > 0:
            ka = min(aux_k, n_dead)
            t = pre.masked_fill(~dead, float("-inf")).topk(ka, dim=-1)
            e_hat = torch.zeros_like(pre).scatter(-1, t.indices, t.values.relu()) @ W_dec
            e = -err.detach()
            aux = (e_hat - e).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp_min(1e-12)
            loss = loss + (1 / 32) * min(1.0, n_dead / ka) * aux
        grads = list(torch.autograd.grad(loss, params))
        with torch.no_grad():
            grads[2] = grads[2] - (grads[2] * W_dec).sum(1, keepdim=True) * W_dec
            bc1, bc2 = 1 - b1 ** (i + 1), 1 - b2 ** (i + 1)
            for p, gr, mi, vi in zip(params, grads, m, v):
                mi.mul_(b1).add_(gr, alpha=1 - b1)
                vi.mul_(b2).addcmul_(gr, gr, value=1 - b2)
                p.addcdiv_(mi, (vi / bc2).sqrt_().add_(eps), value=-lr / bc1)
            W_dec.div_(W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
            since_fired.add_(x.shape[0]).masked_fill_((f > 0).any(0), 0)
            sums[0] += loss.item()
            sums[1] += (f > 0).sum(-1).double().mean().item()
            sums[2] += err.pow(2).sum().item()
            sums[3] += ((x - x.mean(0)) * scale).pow(2).sum().item()

    for i in range(3):
        step(i, batch(i))
    t0 = time.perf_counter()
    for i in range(steps):
        step(3 + i, batch(3 + i))
    secs = time.perf_counter() - t0
    return {"steps": steps, "rows": rows, "seconds": secs, "tok_s": steps * rows / secs}


def bench_forward(m, windows, stop, rows):
    import torch
    done, w = 0, 0
    t0 = time.perf_counter()
    with torch.no_grad():
        while done < rows:
            toks = windows[w % (windows.shape[0] - 16):][:16]
            w += 16
            x = torch.nn.functional.embedding(toks, m.embed)
            x, _ = blocks(m, x, 3 if stop else m.L)
            if not stop:
                torch.nn.functional.linear(m.rms_norm(x, m.norm), m.head)
            rows_here = toks.numel() - 16
            x.reshape(-1, x.shape[-1])[(toks != BOS).reshape(-1)]  # what a store keeps
            done += rows_here
    return done / (time.perf_counter() - t0)


def load_windows(path):
    """The int64 token windows bench_sae saved (baseline_engine's reader only knows floats)."""
    import numpy as np
    import struct
    import torch
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        e = json.loads(f.read(n))["windows"]
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


def run(args):
    import torch
    torch.manual_seed(0)
    m = Llama(args.model)
    saved = load_safetensors(os.path.join(args.work, "acts.safetensors"))
    acts, synth = saved["acts"].clone(), saved["synthetic"].clone()
    res = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "update": []}
    for name, d_in, d_sae, k, rows in SHAPES:
        print(f"baseline_sae: update, {name}", file=sys.stderr)
        r = bench_update(acts if d_in == 64 else synth, d_in, d_sae, k, rows, args.steps)
        r["name"] = name
        res["update"].append(r)
    print("baseline_sae: forward", file=sys.stderr)
    hw = load_windows(os.path.join(args.work, "harvest_windows.safetensors"))
    rows = 4096 * 24
    res["store"] = {"forward_stop_tok_s": bench_forward(m, hw, True, rows), "forward_full_tok_s": bench_forward(m, hw, False, rows)}
    print(f"baseline_sae: harvest, {len(args.sae)} SAEs, {hw.shape[0]} windows", file=sys.stderr)
    res["harvest"] = bench_harvest(m, hw, [load_sae(d) for d in args.sae])
    res["harvest"]["peak_rss_mb"] = peak_rss_mb()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)


def report(args):
    with open(args.lumen) as f:
        lu = json.load(f)
    with open(args.eager) as f:
        ea = json.load(f)
    out = []
    w = out.append
    w("# SAE and feature-harvest benchmark\n")
    w(f"model: {lu['model']} · torch intra-op threads: lumen {lu['torch_threads']}, eager {ea['torch_threads']} · "
      f"both OMP_WAIT_POLICY=PASSIVE, run back to back\n")
    w("## SAE training update (TopK, the step train_sae runs), tokens/s\n")
    w("| shape | lumen | eager | lumen/eager | target | status |")
    w("|---|---:|---:|---:|---|---|")
    for a, b in zip(lu["update"], ea["update"]):
        r = a["tok_s"] / b["tok_s"]
        w(f"| {a['name']} | {a['tok_s']:,.0f} | {b['tok_s']:,.0f} | {r:.2f}× | ≥1.0× | {'PASS' if r >= 1.0 else '**MISS**'} |")
    s, es = lu["store"], ea["store"]
    w("\n## Activation store at blocks.2.hook_resid_post (5-layer model), rows/s\n")
    w("| what | stop_at_layer | full model | stop / full |")
    w("|---|---:|---:|---:|")
    w(f"| lumen ActivationStore (forward + buffer + shuffle) | {s['store_stop_tok_s']:,.0f} | {s['store_full_tok_s']:,.0f} | "
      f"{s['store_stop_tok_s'] / s['store_full_tok_s']:.2f}× |")
    w(f"| lumen forward only | {s['forward_stop_tok_s']:,.0f} | {s['forward_full_tok_s']:,.0f} | "
      f"{s['forward_stop_tok_s'] / s['forward_full_tok_s']:.2f}× |")
    w(f"| eager forward only | {es['forward_stop_tok_s']:,.0f} | {es['forward_full_tok_s']:,.0f} | "
      f"{es['forward_stop_tok_s'] / es['forward_full_tok_s']:.2f}× |")
    share = s["store_stop_tok_s"] / s["forward_stop_tok_s"]
    w(f"\nThe store serves rows at {100 * share:.0f}% of the bare forward pass's rate (stopping at the layer): "
      f"{'the forward dominates' if share >= 0.7 else 'buffering costs a noticeable share'}.\n")
    h, eh = lu["harvest"], ea["harvest"]
    r = h["tok_s"] / eh["tok_s"]
    w("## Feature harvest, every SAE at once, tokens/s\n")
    w("| SAEs | tokens | lumen (SQLite store included) | eager (in memory) | lumen/eager | target | status | lumen peak RSS |")
    w("|---:|---:|---:|---:|---:|---|---|---:|")
    w(f"| {h['n_saes']} | {h['tokens']:,} | {h['tok_s']:,.0f} | {eh['tok_s']:,.0f} | {r:.2f}× | ≥1.5× | "
      f"{'PASS' if r >= 1.5 else '**MISS**'} | {h['peak_rss_mb']:.0f} MB |")
    text = "\n".join(out) + "\n"
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--sae", action="append", default=[])
    r.add_argument("--out", required=True)
    r.add_argument("--steps", type=int, default=30)
    q = sub.add_parser("report")
    q.add_argument("--lumen", required=True)
    q.add_argument("--eager", required=True)
    q.add_argument("--md")
    args = p.parse_args()
    run(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    main()
