"""What a new user tripped over (issue 23), each pinned by the user's own command or call."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import robench
from robench.cli import app


def _tiny_model_and_data() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A linear model on 24 random 3x8x8 images of 3 classes: an evaluation in seconds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    images = torch.rand(24, 3, 8, 8)
    return model, (images, model(images).argmax(1).detach())


# --------------------------------------------------------------------------- evaluate(eps=)


def test_evaluate_takes_a_list_of_linf_eps_or_one_eps():
    model, data = _tiny_model_and_data()
    as_dict = robench.evaluate(model, data, attacks=["fgsm"], eps={"linf": ["0.1"]})
    as_list = robench.evaluate(model, data, attacks=["fgsm"], eps=["0.1"])
    as_one = robench.evaluate(model, data, attacks=["fgsm"], eps=0.1)
    for results in (as_list, as_one):
        attack = results[results.attack == "fgsm"]
        assert list(attack.threat) == ["linf"] and list(attack.eps) == [0.1]
        columns = ["attack", "threat", "eps", "clean_acc", "robust_acc", "n_robust"]
        assert results[columns].equals(as_dict[columns])
    fractions = robench.evaluate(model, data, attacks=["fgsm"], eps=("4/255", "8/255"))
    assert sorted(fractions[fractions.attack == "fgsm"].eps_label) == ["4/255", "8/255"]
    single_text = robench.evaluate(model, data, attacks=["fgsm"], eps={"linf": "8/255"})
    assert list(single_text[single_text.attack == "fgsm"].eps_label) == ["8/255"]


@pytest.mark.parametrize("eps", [{0.1, 0.2}, True, b"8/255", 3j])
def test_evaluate_refuses_any_other_eps_with_one_sentence(eps):
    model, data = _tiny_model_and_data()
    with pytest.raises(robench.UsageError) as error:
        robench.evaluate(model, data, attacks=["fgsm"], eps=eps)
    message = str(error.value)
    assert message.startswith("evaluate(): eps must be a dict of threat -> budgets")
    assert "a list of Linf budgets" in message and message.count(". ") == 0


def test_evaluate_refuses_a_bad_budget_in_a_list_before_any_work():
    model, data = _tiny_model_and_data()
    with pytest.raises(robench.UsageError, match=r"^Bad eps 'abc' for threat 'linf'"):
        robench.evaluate(model, data, attacks=["fgsm"], eps=["0.1", "abc"])


# --------------------------------------------------------------------------- robench plugins


def test_plugins_with_a_mistyped_kind_suggests_the_closest_kind():
    result = subprocess.run([sys.executable, "-m", "robench.cli", "plugins", "--kind", "atack"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("robench: error: Unknown plugin kind 'atack'. Did you mean "
                                    "'attack'? Kinds are dataset, backbone, head")
    assert "Traceback" not in result.stderr
    plural = CliRunner().invoke(app, ["plugins", "--kind", "attacks"])
    assert plural.exit_code == 0 and "fgsm" in plural.output
    far = CliRunner().invoke(app, ["plugins", "--kind", "zzz"])
    assert far.exit_code == 2 and "Did you mean" not in far.output
