#!/usr/bin/python3
"""PyTorch eager baseline for lumen's feature-visualization benchmark, and the report.

    baseline_viz.py run --model HF_DIR --sae SAE_DIR --latent N --out FILE.json
        [--len 12] [--candidates 512] [--topk 256] [--reps 10] [--threads N]
    baseline_viz.py report --lumen FILE.json --eager FILE.json --out FILE.md

`run` does one GCG step the way a Python research loop does it (nanoGCG's shape): the gradient of
the SAE latent's pre-activation at the last token with respect to a one-hot input, `candidates`
single-token swaps drawn from the top-k of each position, and one batched forward pass over all of
them (every layer, as HF's model(..., output_hidden_states=True) runs) with the SAE's TopK encode.
The model is baseline_engine.py's eager llama on the HF export of the same llama2.c checkpoint.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def run(a):
    import torch
    import torch.nn.functional as F
    import baseline_engine as be
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    m = be.Llama(a.model)
    with open(os.path.join(a.sae, "cfg.json")) as f:
        cfg = json.load(f)
    w = be.load_safetensors(os.path.join(a.sae, "sae_weights.safetensors"))
    W_enc, b_enc, b_dec = w["W_enc"], w["b_enc"], w["b_dec"]  # [D,S], [S], [D]
    k = cfg.get("k") or cfg.get("activation_fn_kwargs", {}).get("k")
    layer = int(cfg["hook_name"].split(".")[1])

    def pre_act(x):  # [...,D] -> [...,S]
        return (x - b_dec) @ W_enc + b_enc

    def topk_act(pre):
        v, i = pre.topk(k, -1)
        return torch.zeros_like(pre).scatter(-1, i, v.relu())

    g = torch.Generator().manual_seed(5)
    T, C, V = a.len, a.candidates, m.V
    ids = torch.cat([torch.tensor([1]), torch.randint(3, V, (T,), generator=g)])  # BOS + sequence

    def step(ids):
        one_hot = F.one_hot(ids, V).float()[None].requires_grad_(True)  # [1,T+1,V]
        hidden = []
        m.forward(embeds=one_hot @ m.embed, hidden=hidden)
        pre_act(hidden[layer])[0, -1, a.latent].backward()
        grad = one_hot.grad[0, 1:]  # [T,V]
        top = grad.topk(a.topk, dim=1).indices  # [T,k]
        pos = torch.randint(0, T, (C,), generator=g)
        tok = top[pos, torch.randint(0, a.topk, (C,), generator=g)]
        cands = ids.repeat(C, 1)
        cands[torch.arange(C), pos + 1] = tok
        with torch.no_grad():
            hidden = []
            m.forward(cands, hidden=hidden)
            acts = topk_act(pre_act(hidden[layer][:, -1]))[:, a.latent]
        return cands[acts.argmax()]

    times, cpu = [], []
    for r in range(a.reps + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        ids = step(ids)
        if r >= 2:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    med = statistics.median(times)
    out = {"impl": "eager", "torch": torch.__version__, "threads": torch.get_num_threads(), "len": T, "candidates": C,
           "gcg_step": {"median_s": med, "candidates_per_s": C / med, "times": times,
                        "cpu_median_s": statistics.median(cpu)}}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))


def report(a):
    with open(a.lumen) as f:
        lu = json.load(f)
    with open(a.eager) as f:
        ea = json.load(f)
    e = ea["gcg_step"]["candidates_per_s"]
    rows = [
        ("GCG step, PyTorch eager (all layers)", e, ea["gcg_step"]["median_s"]),
        ("GCG step, lumen, all layers + logits", lu["gcg_step_full"]["candidates_per_s"], lu["gcg_step_full"]["median_s"]),
        ("GCG step, lumen, stop_at_layer", lu["gcg_step_stop"]["candidates_per_s"], lu["gcg_step_stop"]["median_s"]),
        ("GCG step, lumen, stop_at_layer + shared prefix (as lumen's GCG runs it)", lu["gcg_step_reuse"]["candidates_per_s"],
         lu["gcg_step_reuse"]["median_s"]),
        ("beam step, lumen, full sequences", lu["beam_step_full_sequences"]["candidates_per_s"],
         lu["beam_step_full_sequences"]["median_s"]),
        ("beam step, lumen, shared-prefix KV reuse", lu["beam_step_prefix_reuse"]["candidates_per_s"],
         lu["beam_step_prefix_reuse"]["median_s"]),
    ]
    md = ["| workload | candidates/s | step (ms) | vs eager GCG step |", "|---|---|---|---|"]
    for name, cps, s in rows:
        md.append(f"| {name} | {cps:,.0f} | {1000 * s:.1f} | {cps / e:.2f}x |")
    md.append("")
    n_tok = lu["candidates"] * (lu["len"] + 1)
    md.append(f"{lu['candidates']} candidates of {lu['len']} tokens (+BOS) per GCG step, latent on {lu['hook']}; "
              f"threads: lumen {lu['threads']}, eager {ea['threads']} (torch {ea['torch']}). "
              f"Forward tokens per step: {n_tok} for full candidates, {lu['gcg_step_reuse']['tokens']} with the shared "
              f"prefix. Scoring alone (ms): {1000 * lu['gcg_parts_full']['evaluate_s']:.1f} all layers, "
              f"{1000 * lu['gcg_parts_stop']['evaluate_s']:.1f} stop_at_layer, "
              f"{1000 * lu['gcg_parts_reuse']['evaluate_s']:.1f} + shared prefix; gradient and sampling "
              f"{1000 * lu['gcg_parts_reuse']['gradient_and_sampling_s']:.1f}; lumen's round-trip validity filter of "
              f"the candidates (not in the timed step, eager has none) {1000 * lu['gcg_parts_reuse']['validity_s']:.1f}.")
    md.append("")
    md.append(f"**Ratio lumen/eager for the GCG step as lumen runs it (stop_at_layer + shared prefix): "
              f"{lu['gcg_step_reuse']['candidates_per_s'] / e:.2f}x** (fastest repetitions: "
              f"{min(ea['gcg_step']['times']) / min(lu['gcg_step_reuse']['times']):.2f}x; by process CPU time, "
              f"{ea['gcg_step']['cpu_median_s'] / lu['gcg_step_reuse']['cpu_median_s']:.2f}x: "
              f"{1000 * lu['gcg_step_reuse']['cpu_median_s']:.1f} ms against {1000 * ea['gcg_step']['cpu_median_s']:.1f} ms)")
    text = "\n".join(md) + "\n"
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--sae", required=True)
    r.add_argument("--latent", type=int, required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--len", type=int, default=12)
    r.add_argument("--candidates", type=int, default=512)
    r.add_argument("--topk", type=int, default=256)
    r.add_argument("--reps", type=int, default=10)
    r.add_argument("--threads", type=int, default=0)
    p = sub.add_parser("report")
    p.add_argument("--lumen", required=True)
    p.add_argument("--eager", required=True)
    p.add_argument("--out", required=True)
    a = ap.parse_args()
    run(a) if a.cmd == "run" else report(a)


if __name__ == "__main__":
    main()
