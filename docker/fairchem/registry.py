"""aserpc registry for fairchem's UMA: `aserpc worker UMA --registry registry.py:CALCULATORS`.

fairchem builds a calculator in two steps (a predict unit, then FAIRChemCalculator around it), so
it needs a factory of its own. UMA_MODEL, UMA_TASK and UMA_DEVICE choose the checkpoint, task
head and device (defaults: uma-s-1p1, omat, cpu). UMA is gated on Hugging Face: the first run
needs HF_TOKEN; later runs read ~/.cache/huggingface.
"""

import os


def uma():
    from fairchem.core import FAIRChemCalculator, pretrained_mlip

    predictor = pretrained_mlip.get_predict_unit(
        os.environ.get("UMA_MODEL", "uma-s-1p1"), device=os.environ.get("UMA_DEVICE", "cpu"))
    return FAIRChemCalculator(predictor, task_name=os.environ.get("UMA_TASK", "omat"))


CALCULATORS = {"UMA": uma}
