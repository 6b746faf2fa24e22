"""Deprecated: the example studies' models moved to ``studies/models.py``.

``compresstune.models.LeNet300`` and the other old names still work for one
release, with a ``DeprecationWarning`` (from a source checkout only; see
:mod:`compresstune._moved`).
"""

from compresstune._moved import moved_attribute

_MOVED = {name: "studies.models" for name in ("DigitsCNN", "LeNet300", "LeNet5", "TextTransformer")}


def __getattr__(name: str):
    if name == "ResNet20":
        raise AttributeError(
            "`compresstune.models.ResNet20` was removed: no study used it once the CIFAR-10 studies moved to "
            "the paper's ResNet family, `studies.resnet_cifar.CifarResNet(20)` (other parameter names)."
        )
    return moved_attribute(__name__, name, _MOVED)
