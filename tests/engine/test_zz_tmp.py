from test_precision import *
def test_x(lm_config):
    for scale in (2.0**20, 2.0**30, 2.0**40):
        trainer, records = fit(lm_config(fp16=True, init_loss_scale=scale, max_steps=25, learning_rate=3e-3, output_dir=lm_config().output_dir+str(scale)))
        print("SCALE", scale, [r["skipped_steps"] for r in records], [round(r["loss"],3) for r in records])
