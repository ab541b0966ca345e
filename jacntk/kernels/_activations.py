"""The activation registry: one table says what each activation is (docs/activations.md).

Every other module reads the table here: the names accepted by :class:`jacntk.MLP`
(``ACTIVATIONS``), the integer codes the Numba kernels dispatch on (``ACT_CODES`` and the named
codes ``ERF``, ``RELU``, ...), which activations have closed-form Gaussian moments
(``CLOSED_FORM``) and which use the trapezoid rule with its step (``QUADRATURE``,
``QUADRATURE_STEP``), and which are smooth enough for the Jacobian NTK (docs/math.md §2.2, §7.3).
No module compares an activation against a bare integer; ``tests/test_activations.py`` checks
that.

This module is a pure table: it imports nothing from jacntk (``jacntk.arch`` imports it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Activation:
    """One row of the registry.

    Attributes
    ----------
    name : str
        The name accepted by ``MLP(activation=...)``.
    code : int
        The integer the Numba kernels dispatch on (``gaussian_moments``,
        ``activation_derivatives``); the codes are ``0, 1, ..., len(REGISTRY) - 1`` in table
        order.
    closed_form : bool
        The Gaussian moments ``F^{ij}`` have closed forms (``_erf_moments``, ``_relu_moments``,
        ``_gelu_moments`` in :mod:`jacntk.kernels._moments`, a vectorised scalar row in
        :func:`jacntk.kernels._fields._closed_form_scalar_tile`); otherwise they come from the
        trapezoid rule over the derivative table (docs/math.md §5.4) per pair, and in the tiles
        from the Hermite (Mehler) series with per-point coefficients and a per-pair bound
        (docs/activations.md, "The Hermite route").
    quadrature_step : float or None
        The trapezoid step ``h`` (docs/math.md §5.4) of a quadrature activation; ``None``
        exactly for the closed forms.
    smooth : bool
        ``phi`` is ``C^infinity`` with the analytic derivative table ``phi, ..., phi''''``
        (``activation_derivatives``), so every kernel kind exists, the Jacobian NTK included.
        ``False`` only for ReLU: its Jacobian NTK has infinite diagonal blocks (docs/math.md
        §7.3) and its finite networks use ``phi'' := 0``.
    """

    name: str
    code: int
    closed_form: bool
    quadrature_step: float | None
    smooth: bool

    def __post_init__(self) -> None:
        if self.closed_form != (self.quadrature_step is None):
            raise ValueError(
                f"activation {self.name!r}: quadrature_step must be None exactly for the "
                f"closed forms, got closed_form={self.closed_form}, "
                f"quadrature_step={self.quadrature_step}"
            )
        if not self.closed_form and not (self.smooth and self.quadrature_step > 0):
            raise ValueError(
                f"activation {self.name!r}: the trapezoid rule needs a smooth activation (a "
                "derivative table) and a positive step"
            )


#: The registry.  Steps: the integrands are analytic in a strip ``|Im u| < delta`` (tanh:
#: pi/2; sigmoid family: pi; gelu/erf, the test codes below: entire with Gaussian growth) and the
#: trapezoid error decays like ``exp(-2 pi delta / h)``; these steps give <= 1e-12 relative on
#: every moment (tanh: <= 2e-11) for variances 0.05..30, measured in tests/test_moments.py.
REGISTRY: tuple[Activation, ...] = (
    Activation("erf", 0, closed_form=True, quadrature_step=None, smooth=True),
    Activation("relu", 1, closed_form=True, quadrature_step=None, smooth=False),
    Activation("gelu", 2, closed_form=True, quadrature_step=None, smooth=True),
    Activation("tanh", 3, closed_form=False, quadrature_step=0.2, smooth=True),
    Activation("softplus", 4, closed_form=False, quadrature_step=0.4, smooth=True),
    Activation("silu", 5, closed_form=False, quadrature_step=0.3, smooth=True),
)

#: Test-only code: erf's derivative table under the trapezoid rule, to measure the quadrature
#: error against erf's closed forms (tests/test_moments.py); never accepted by ``MLP``.
ERF_BY_QUADRATURE = 100
#: The trapezoid step of ``ERF_BY_QUADRATURE``.
ERF_BY_QUADRATURE_STEP = 0.3
#: Test-only code: gelu's derivative table under the trapezoid rule (gelu's route before its
#: closed forms), the reference of the closed forms (tests/test_gelu_closed_form.py); never
#: accepted by ``MLP``.
GELU_BY_QUADRATURE = 101
#: The trapezoid step of ``GELU_BY_QUADRATURE`` (converged to 1e-14 relative for variances
#: 0.05..30).
GELU_BY_QUADRATURE_STEP = 0.3


#: Reference-code offset: ``TRAPEZOID_REFERENCE + code`` is the activation ``code`` with every
#: moment from the per-pair 2-D trapezoid rule (``_quadrature_moments``, its registry step) in
#: every tile too, where the quadrature activations otherwise take the Hermite (Mehler) route
#: (docs/activations.md, "The Hermite route"); the test reference of that route, never accepted
#: by ``MLP``.  ``trapezoid_reference(code)`` forms it.
TRAPEZOID_REFERENCE = 1000


def trapezoid_reference(code: int) -> int:
    """The reference code of a quadrature activation or test code: the same derivative table,
    every moment by the per-pair trapezoid rule (``TRAPEZOID_REFERENCE + code``)."""
    if code not in QUADRATURE_STEP:
        raise ValueError(f"code {code} has no trapezoid rule (a closed form or unknown)")
    return TRAPEZOID_REFERENCE + code


def check_registry(rows: tuple[Activation, ...]) -> None:
    """Raise ``ValueError`` unless ``rows`` is a valid registry: unique names, codes
    ``0, 1, ..., len(rows) - 1`` in order (they index Numba dispatch), and only ReLU not smooth
    (the non-smooth code paths -- finite networks with ``phi'' := 0``, the large-depth limit
    1/4, the cancellation-free route -- are ReLU's own; docs/activations.md)."""
    names = [row.name for row in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"activation names are not unique: {names}")
    codes = [row.code for row in rows]
    if codes != list(range(len(rows))):
        raise ValueError(f"activation codes must be 0..{len(rows) - 1} in table order: {codes}")
    rough = [row.name for row in rows if not row.smooth]
    if rough not in ([], ["relu"]):
        raise ValueError(f"only relu may be non-smooth, got {rough}")


check_registry(REGISTRY)

BY_NAME: dict[str, Activation] = {row.name: row for row in REGISTRY}
#: All activation names, in table order (public as ``jacntk.ACTIVATIONS``).
ACTIVATIONS: tuple[str, ...] = tuple(row.name for row in REGISTRY)
#: Activations with closed-form Gaussian moments (docs/math.md §5.4, §7.1).
CLOSED_FORM: tuple[str, ...] = tuple(row.name for row in REGISTRY if row.closed_form)
#: Smooth activations whose moments come from the trapezoid rule (docs/math.md §5.4).
QUADRATURE: tuple[str, ...] = tuple(row.name for row in REGISTRY if not row.closed_form)
#: Name -> Numba dispatch code.
ACT_CODES: dict[str, int] = {row.name: row.code for row in REGISTRY}
#: Code -> trapezoid step, for the quadrature activations and the test codes
#: ``ERF_BY_QUADRATURE``, ``GELU_BY_QUADRATURE``.
QUADRATURE_STEP: dict[int, float] = {
    **{row.code: row.quadrature_step for row in REGISTRY if not row.closed_form},
    ERF_BY_QUADRATURE: ERF_BY_QUADRATURE_STEP,
    GELU_BY_QUADRATURE: GELU_BY_QUADRATURE_STEP,
}

#: Codes ``0 .. N_ACTIVATIONS - 1`` are the registry's; the quadrature ones among them take the
#: Hermite route in the tiles, the test codes (>= 100) and reference codes the trapezoid rule.
N_ACTIVATIONS = len(REGISTRY)

# Named dispatch codes: Numba freezes these module globals into the compiled kernels.
ERF = BY_NAME["erf"].code
RELU = BY_NAME["relu"].code
GELU = BY_NAME["gelu"].code
TANH = BY_NAME["tanh"].code
SOFTPLUS = BY_NAME["softplus"].code
SILU = BY_NAME["silu"].code


def get_activation(name: str) -> Activation:
    """The registry row of activation ``name``.

    Raises
    ------
    ValueError
        For a name that is not in ``ACTIVATIONS`` (the message lists the valid names).
    """
    row = BY_NAME.get(name) if isinstance(name, str) else None
    if row is None:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return row
