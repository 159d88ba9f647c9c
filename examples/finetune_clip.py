"""Finetune a CLIP model on image–caption pairs: CLIP's contrastive loss, then image->text and text->image
recall@1/5/10 over the validation set (and zero-shot accuracy when class names are given).

    # with a network: a pretrained CLIP and a Hub dataset with image and caption columns
    accelerate launch --config_file launch_configs/multi_gpu.yaml examples/finetune_clip.py \
        --model openai/clip-vit-base-patch32 --dataset USER/DATASET --image-column image --caption-column caption
    # offline: a local model folder, and CSV/JSON files of image paths (relative to the file, or absolute) and captions
    accelerate launch --config_file launch_configs/cpu_ddp.yaml examples/finetune_clip.py --model ./local_clip \
        --train-file pairs.csv --validation-file val.csv --image-column image_path --caption-column caption

Every TrainConfig flag works here (--epochs, --lr, --batch-size, --output-dir, ...), with
examples/configs/clip_script.yaml as the defaults. Under DDP each process contrasts its pairs with those of all
processes (--gather-negatives false turns that off). The run folder's model/ holds the finetuned model and its
processor: CLIPModel.from_pretrained and AutoProcessor.from_pretrained load them.
"""

from pathlib import Path

from accel_train import fit, parse_config
from accel_train.captions import ImageCaptionCollator
from accel_train.jobs.clip import ClipOptions, load_clip, text_max_length
from accel_train.multimodal import ClipTask


def main(argv=None):
    defaults = Path(__file__).parent / "configs" / "clip_script.yaml"
    cfg, opts = parse_config(argv, defaults=str(defaults), options=ClipOptions)
    train_data, eval_data = opts.load_data()  # every image is checked before the run folder is written
    model, processor = load_clip(opts.model)
    task = ClipTask(processor, class_names=opts.class_names or None, prompt=opts.prompt,
                    gather_negatives=opts.gather_negatives)
    collate = ImageCaptionCollator(processor, max_length=opts.max_length or text_max_length(model))
    return fit(model, train_data, eval_data, task=task, collate_fn=collate, processor=processor, config=cfg,
               options=opts)


if __name__ == "__main__":
    main()
