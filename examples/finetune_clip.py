"""Finetune a CLIP model on image–caption pairs: CLIP's contrastive loss, then image->text and text->image
recall@1/5/10 over the validation set (and zero-shot accuracy when class names are given).

    # with a network: a pretrained CLIP and a Hub dataset with image and caption columns
    accelerate launch --config_file launch_configs/multi_gpu.yaml examples/finetune_clip.py \\
        --job.model openai/clip-vit-base-patch32 --job.dataset USER/DATASET --job.image-column image
    # offline: a local model folder, and CSV/JSON files of image paths (relative to the file, or absolute) and captions
    accelerate launch --config_file launch_configs/cpu_ddp.yaml examples/finetune_clip.py --job.model ./local_clip \\
        --job.train-file pairs.csv --job.validation-file val.csv --job.image-column image_path

The job file examples/configs/clip.yaml gives the defaults; the script takes the same flags as `accel-train train`.
Under DDP each process contrasts its pairs with those of all processes (--job.gather-negatives false turns that
off). The run folder's model/ holds the finetuned model and its processor: CLIPModel.from_pretrained and
AutoProcessor.from_pretrained load them.
"""

from pathlib import Path

from accel_train import exit_on_user_error, fit, parse_config
from accel_train.launch import leave
from accel_train.tasks.captions import ImageCaptionCollator
from accel_train.tasks.clip import ClipFinetune, ClipTask, load_clip, text_max_length

JOB_FILE = Path(__file__).parent / "configs" / "clip.yaml"


def main(argv=None):
    cfg, job = parse_config(argv, defaults=str(JOB_FILE), options=ClipFinetune)
    train_data, eval_data = job.load_data()  # every image is checked before the run folder is written
    model, processor = load_clip(job.model)
    task = ClipTask(processor, class_names=job.class_names or None, prompt=job.prompt,
                    gather_negatives=job.gather_negatives)
    collate = ImageCaptionCollator(processor, max_length=job.max_length or text_max_length(model))
    return fit(model, train_data, eval_data, task=task, collate_fn=collate, processor=processor, config=cfg,
               options=job)


if __name__ == "__main__":
    with exit_on_user_error():
        main()
    leave(0)  # end without Python's teardown, 1-2 s after a run (see accel_train.launch.leave)
