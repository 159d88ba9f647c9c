"""The task families: each module holds a family's task (batch -> losses, predictions, targets), its data, its
model helpers and its built-in job, side by side.

    vision       Digits (a small CNN on scikit-learn's digits), Cifar10 (ResNet-18)
    text         TextClassification: BERT-style classifiers finetuned on labelled texts
    causal_lm    CausalLM: GPT-style language models, the loss weighted per token
    clip         ClipFinetune: CLIP's contrastive loss, retrieval recall and zero-shot accuracy
    clip_digits  ClipDigits: a small CLIP trained from scratch on the digits, offline
    fusion       FusionDigits: an image + text fusion model called as net(*inputs)

Shared by the families: `text_data` (reading and tokenizing texts for text and causal_lm) and `captions`
(image–caption pairs for clip and clip_digits). Nothing here is imported by the core.
"""
