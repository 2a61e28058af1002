"""The feature-importance loss: which map it taps, the importance, and that the loop uses it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unrestrict.attack import Attack, AttackConfig
from unrestrict.features import FeatureTap, feature_importance, feature_loss, tap_module
from unrestrict.models import Classifier, Ensemble, Preprocess


def _toy() -> Classifier:
    # Modules registered in an order unlike the forward's: the tap follows the forward.
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.ReLU()
            self.early = nn.ReLU6()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.head = nn.Linear(4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.late(self.conv2(self.early(self.conv1(x))))
            return self.head(x.mean((2, 3)))

    return Classifier(Net(), Preprocess(16)).eval().requires_grad_(False)


def test_the_tap_is_counted_in_forward_order():
    clf = _toy()
    assert tap_module(clf, 0.0) is clf.model.early
    assert tap_module(clf, 1.0) is clf.model.late
    with pytest.raises(ValueError, match="no ReLU"):
        tap_module(Classifier(nn.Sequential(nn.Flatten(), nn.LazyLinear(10)), Preprocess(8)),
                   0.5)


def test_importance_is_unit_norm_and_each_images_own():
    ens = Ensemble([_toy()])
    tap = FeatureTap(ens, 0.0)
    x, y = torch.rand(3, 3, 16, 16), torch.tensor([1, 2, 3])

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    together = feature_importance(ens, tap, x, y, 4, 0.3, gens([5, 6, 7]))[0]
    alone = feature_importance(ens, tap, x[1:2], y[1:2], 4, 0.3, gens([6]))[0]
    assert together.shape == (3, 4, 16, 16)
    torch.testing.assert_close(together.flatten(1).norm(dim=1), torch.ones(3))
    torch.testing.assert_close(together[1:2], alone, atol=1e-6, rtol=1e-5)
    # The loss of k augmented copies of a batch pairs each copy with its image's importance.
    with tap.recording() as feats:
        ens(torch.cat([x, x]))
    loss = feature_loss(feats, [together])
    torch.testing.assert_close(loss[:3], loss[3:])


@pytest.mark.integration  # loads the offline weights
def test_the_loop_suppresses_the_features_the_true_class_leans_on(sample_images):
    from unrestrict.models import create_classifier

    ens = Ensemble([create_classifier("mobilenet_v2")])
    x, y = sample_images[0][:2], sample_images[1][:2]
    judge = Attack(AttackConfig(feature_weight=1.0), ens)  # its tap and importance
    importance = [judge.guide(x, y, [torch.Generator().manual_seed(i) for i in range(2)])[
        "importance.0"]]
    scores = []
    for weight in (0.0, 20.0):
        # A low cap on the margin: past it, only the feature term pulls.
        cfg = AttackConfig(families=("pixel",), work_size=0, stages=1, steps=4, refine=0,
                           di_prob=0.0, kappa=0.5, feature_weight=weight)
        res = Attack(cfg, ens).run(x, y)
        adv = torch.stack([r.decoded for r in res]).float() / 255
        with torch.no_grad(), judge.tap.recording() as feats:
            ens(ens.to_input_size(adv))
        scores.append(feature_loss(feats, importance))
        assert all(r.passes == 4 + (cfg.feature_copies if weight else 0) for r in res)
    assert (scores[1] > scores[0]).all(), scores
