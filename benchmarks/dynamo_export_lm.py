"""torch.onnx.export(dynamo=True) of a Llama causal LM with flat past key/values: the fallback exporter evaluated in
generative_bundles.md. Usage: python benchmarks/dynamo_export_lm.py HF_DIR OUT/model.onnx (prints export time, parity, decode speed)."""
import sys, time, json, numpy as np, torch
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicCache
src, out = sys.argv[1], sys.argv[2]
m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
L = m.config.num_hidden_layers
kvh = m.config.num_key_value_heads; hd = getattr(m.config, "head_dim", None) or m.config.hidden_size // m.config.num_attention_heads

class W(torch.nn.Module):
    def __init__(s, m): super().__init__(); s.m = m
    def forward(s, input_ids, attention_mask, position_ids, *past):
        cache = DynamicCache()
        for i in range(L):
            cache.update(past[2 * i], past[2 * i + 1], i)
        o = s.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache, use_cache=True)
        pk = o.past_key_values
        flat = []
        for i in range(L):
            layer = pk.layers[i]
            flat += [layer.keys, layer.values]
        return (o.logits, *flat)

w = W(m)
B, S, P = 1, 3, 2
ids = torch.randint(0, 100, (B, S)); am = torch.ones(B, P + S, dtype=torch.long); pos = torch.arange(P, P + S)[None]
past = [torch.randn(B, kvh, P, hd) for _ in range(2 * L)]
D = torch.export.Dim.DYNAMIC
batch = seq = pl = tot = D
dyn = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: tot}, "position_ids": {0: batch, 1: seq},
       "past": tuple({0: batch, 2: pl} for _ in range(2 * L))}
names_in = ["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{i}.{k}" for i in range(L) for k in ("key", "value")]
names_out = ["logits"] + [f"present.{i}.{k}" for i in range(L) for k in ("key", "value")]
t = time.time()
try:
    torch.onnx.export(w, (ids, am, pos, *past), out, dynamo=True, dynamic_shapes=(dyn["input_ids"], dyn["attention_mask"], dyn["position_ids"], dyn["past"]),
                      input_names=names_in, output_names=names_out, external_data=True, optimize=True)
    print("export s", time.time() - t)
except Exception as e:
    print("EXPORT FAILED", type(e).__name__, str(e)[:2000]); sys.exit(1)
import onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(out, so, providers=["CPUExecutionProvider"])
with torch.no_grad():
    ref = w(ids, am, pos, *past)[0].numpy()
got = s.run(None, {"input_ids": ids.numpy(), "attention_mask": am.numpy(), "position_ids": pos.numpy(), **{n: p.numpy() for n, p in zip(names_in[3:], past)}})[0]
print("max abs diff", float(np.abs(got - ref).max()))
# greedy decode speed, batch 1
prompt = list(range(100, 164)); x = np.array([prompt]); pk = {n: np.zeros((1, kvh, 0, hd), np.float32) for n in names_in[3:]}
T = len(prompt); toks = []
t0 = time.perf_counter()
for step in range(33):
    r = s.run(None, {"input_ids": x, "attention_mask": np.ones((1, T), np.int64), "position_ids": np.arange(T - x.shape[1], T)[None], **pk})
    nxt = int(r[0][0, -1].argmax()); toks.append(nxt)
    if step == 0: t1 = time.perf_counter()
    pk = {n.replace("present.", "past_key_values."): v for n, v in zip(names_out[1:], r[1:])}
    x = np.array([[nxt]]); T += 1
print(json.dumps({"ttft_ms": (t1 - t0) * 1e3, "decode_tok_s": 32 / (time.perf_counter() - t1), "tokens": toks[:10]}))
