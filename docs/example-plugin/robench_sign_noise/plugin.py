"""Registers one attack and one backbone through robench's entry-point group.

Every robench command imports this module (listing plugins, refusing a mistyped name), so it
imports no torch: ``robench.lazy`` names the classes in ``robench_sign_noise.factories``,
which is imported only when one of them is built or its parameters are checked.
"""

import robench


@robench.hookimpl
def robench_register_attacks():
    return [robench.AttackSpec(name="sign-noise",
                               factory=robench.lazy("robench_sign_noise.factories:SignNoise"),
                               threat="linf", black_box=True, description="random sign noise")]


@robench.hookimpl
def robench_register_backbones():
    return [robench.BackboneSpec(name="tiny-mlp",
                                 factory=robench.lazy("robench_sign_noise.factories:TinyMLP"),
                                 description="a one-layer MLP")]
