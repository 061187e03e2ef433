"""Offline evaluation of M²Chat with the paper's metrics (Tables 1 and 2):

    python -m train.evaluate --config train/configs/evaluate_paper.yaml [--section.field VALUE ...]

generates images (and, for dialogues, answers) for an evaluation set, resumably, then
scores CLIP, FID, BLEU-1/2, ROUGE-L and InterRel (Eq. 8) with local scorer weights and
writes `results.json` and `results.md` beside the images.
"""
