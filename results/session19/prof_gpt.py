import time, sys, torch
from iqvae.models.gpt import GPT, GPTConfig, GPTOptions
from iqvae.train.gumbel import GumbelConfig, training_loss
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
n_cond = int(sys.argv[2]) if len(sys.argv) > 2 else 64
import os
opts = GPTOptions(n_layer=int(os.environ.get("NL", 4)), n_head=4, n_embd=int(os.environ.get("NE", 128)), pos_init="spatial", cond_align=True, above_input=True,
                  above_window=3, cfg_dropout=0.1)
meta = {"cond_vocab": 64, "image_vocab": 128, "n_cond": n_cond, "n_image": 64, "tokens_shape": [8, 8]}
cfg = GPTConfig.from_options(opts, meta)
torch.manual_seed(0)
m = GPT(cfg); opt = m.configure_optimizer(5e-3)
g = GumbelConfig(mode="gumbel", every=4, threshold=0.9, linear_steps=8000)
cb = torch.randn(128, 32)
cond = torch.randint(0, 64, (16, n_cond)); img = torch.randint(0, 128, (16, 64))
null = torch.rand(16) < 0.1
BF = "--bf16" in sys.argv
def step(s):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF):
        loss, _ = training_loss(m, cond, img, s, g, cb, null=null)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True); return loss.item()
for s in range(10): step(s)
t = time.perf_counter()
for s in range(10, 110): step(s)
print("s/step", (time.perf_counter() - t) / 100)
if "--prof" in sys.argv:
    from torch.profiler import profile
    with profile() as p:
        for s in range(110, 130): step(s)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
