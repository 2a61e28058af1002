"""unrestrict: natural (colour, style, geometry) adversarial examples for ImageNet classifiers,
scored like the CVPR 2021 Security AI Challenger Track 2 (unrestricted adversarial attacks)."""

__version__ = "0.1.0"
