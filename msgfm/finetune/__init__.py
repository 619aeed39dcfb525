"""Downstream finetuning (paper §4.2, App. C.2): task heads, backbone initialisation
(msGFM, random, ImageNet-22k), the finetuning model with layer decay, and the paper's metrics.
"""
