import os, time, sys, torch
from iqvae.models.gpt import GPT, GPTConfig, GPTOptions
from iqvae.train.gumbel import GumbelConfig, training_loss
torch.set_num_threads(1)
opts = GPTOptions(n_layer=int(os.environ.get("NL", 2)), n_head=4, n_embd=int(os.environ.get("NE", 128)), pos_init="spatial", cond_align=True, above_input=True,
                  above_window=3, cfg_dropout=0.1)
meta = {"cond_vocab": 64, "image_vocab": 128, "n_cond": 256, "n_image": 256, "tokens_shape": [16, 16]}
cfg = GPTConfig.from_options(opts, meta)
torch.manual_seed(0)
m = GPT(cfg); opt = m.configure_optimizer(5e-3)
g = GumbelConfig(mode="gumbel", every=4, threshold=0.9, linear_steps=800)
cb = torch.randn(128, 32)
cond = torch.randint(0, 64, (16, 256)); img = torch.randint(0, 128, (16, 256))
null = torch.rand(16) < 0.1
def step(s):
    loss, _ = training_loss(m, cond, img, s, g, cb, null=null)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True); return loss.item()
for s in range(4): step(s)
t = time.perf_counter()
for s in range(4, 44): step(s)
print(sys.argv[1], "s/step", (time.perf_counter() - t) / 40)
