"""Ad hoc (session 19, scene metrics added in session 20): evaluate a pipeline folder on the val split at several (T, s); prints one line each."""
import sys, json, torch
from iqvae.data.config import build_dataset
from iqvae.evaluation.samples import draw_samples, shapes_metrics
from iqvae.pipeline import IQVAEPipeline
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
d, cond = sys.argv[1], sys.argv[2]
pipe = IQVAEPipeline.from_pretrained(d)
import os
val = build_dataset(pipe.tokenizer.data_config, os.environ.get("SPLIT", "val"))
for arg in sys.argv[4:]:
    T, s, *mp = map(float, arg.split(","))
    mp = mp[0] if mp else None
    smp = draw_samples(pipe, val, cond, num_conditions=64, samples_per_condition=8, seed=0, progress=False,
                       temperature=T, guidance_scale=s, min_p=mp)
    m = shapes_metrics(smp, [val[i].cond["seg"] for i in smp.indices])
    print(json.dumps({"run": d, "cond": cond, "T": T, "s": s, "min_p": mp, **{k: round(m[k], 4) for k in
          ("palette_accuracy", "mask_miou", "mode_coverage", "scene_accuracy", "scene_mode_coverage")}}), flush=True)
