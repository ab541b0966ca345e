"""Plain-NumPy reference of the field recursion (docs/math.md §5.2–§5.4), vectorised over pairs.

It implements the same mathematics as the Numba tiles of :mod:`jacntk.kernels._fields` without
sharing
their code — moments are evaluated on whole arrays of pairs, the jets are carried as a dict of
arrays — so the tests can compare the two to round-off.  It is slow and memory-hungry by design
(O(n1 n2 nodes^2) for quadrature activations); use it for checking only.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf as _erf
from scipy.special import expit

from ..arch import MLP, check_kind
from ..validation import as_pair
from ._activations import (
    ERF,
    ERF_BY_QUADRATURE_STEP,
    GELU,
    GELU_BY_QUADRATURE_STEP,
    RELU,
    SILU,
    SOFTPLUS,
    TANH,
    get_activation,
)
from ._moments import COLLINEAR_TOL

_JETS = ("", "p", "q", "r", "pp", "pq", "pr", "qr")


def derivatives(activation: str, u: np.ndarray) -> list[np.ndarray]:
    """``[phi, phi', phi'', phi''', phi'''']`` evaluated elementwise on ``u`` (the NumPy twin of
    :func:`jacntk.kernels._moments.activation_derivatives`, written independently of it)."""
    code = get_activation(activation).code
    if code == GELU:
        pdf = np.exp(-0.5 * u * u) / np.sqrt(2 * np.pi)
        cdf = 0.5 * (1 + _erf(u / np.sqrt(2)))
        return [
            u * cdf,
            cdf + u * pdf,
            (2 - u**2) * pdf,
            (u**3 - 4 * u) * pdf,
            (-(u**4) + 7 * u**2 - 4) * pdf,
        ]
    if code == TANH:
        t = np.tanh(u)
        s = 1 - t * t
        return [t, s, -2 * t * s, s * (6 * t * t - 2), 8 * t * s * (2 - 3 * t * t)]
    if code in (SOFTPLUS, SILU):
        sg = expit(u)
        ds = [sg, sg * (1 - sg)]
        ds.append(ds[1] * (1 - 2 * sg))
        ds.append(ds[1] * (1 - 6 * sg + 6 * sg**2))
        ds.append(ds[2] * (1 - 12 * sg + 12 * sg**2))
        if code == SOFTPLUS:
            return [np.logaddexp(0, u)] + ds[:4]
        return [u * ds[0]] + [u * ds[k] + k * ds[k - 1] for k in range(1, 5)]
    if code == ERF:
        e = 2 / np.sqrt(np.pi) * np.exp(-u * u)
        return [_erf(u), e, -2 * u * e, (4 * u * u - 2) * e, (-8 * u**3 + 12 * u) * e]
    raise ValueError(f"no derivative table for {activation!r}")


def moments(activation: str, c, a, b, quadrature: bool = False) -> dict[str, np.ndarray]:
    """All ten moments ``F^{ij}(c, a, b)`` (keys ``"00"``, ``"11"``, ..., ``"24"``) on arrays
    (ReLU: the seven finite ones).  ``quadrature``: erf or gelu by the trapezoid rule, as the test
    codes ``ERF_BY_QUADRATURE``, ``GELU_BY_QUADRATURE`` of :mod:`jacntk.kernels._moments`."""
    c, a, b = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (c, a, b)))
    spec = get_activation(activation)
    if spec.code == ERF and not quadrature:
        A, B = 1 + 2 * a, 1 + 2 * b
        delta = A * B - 4 * c * c
        k = 4 / np.pi
        return {
            "00": 2 / np.pi * np.arcsin(np.clip(2 * c / np.sqrt(A * B), -1, 1)),
            "11": k * delta**-0.5,
            "20": -2 * k * c / (A * delta**0.5),
            "02": -2 * k * c / (B * delta**0.5),
            "22": 4 * k * c * delta**-1.5,
            "31": -2 * k * B * delta**-1.5,
            "13": -2 * k * A * delta**-1.5,
            "33": 4 * k * (delta**-1.5 + 12 * c * c * delta**-2.5),
            "42": -24 * k * c * B * delta**-2.5,
            "24": -24 * k * c * A * delta**-2.5,
        }
    if spec.code == GELU and not quadrature:
        A, B = 1 + a, 1 + b
        D = A * B - c * c
        t = np.pi / 2 + np.arcsin(np.clip(c / np.sqrt(A * B), -1, 1))
        al, be, ga = A / D, B / D, c / D
        w = 1 / (2 * np.pi * np.sqrt(D))
        return {
            "00": w * (c * t * np.sqrt(D) + a * b * D / (A * B) + c * c / (A * B)),
            "11": w * (t * np.sqrt(D) + c * (A + B) / (A * B) + c / D),
            "20": w * (b * (a + 2) - c * c * (1 + 2 / A + 1 / D)) / A,
            "02": w * (a * (b + 2) - c * c * (1 + 2 / B + 1 / D)) / B,
            "22": w * ((1 + al) * (1 + be) + 2 * ga**2),
            "31": -w * c * ((A + 2) / A**2 + (A + B) / (A * D) + 3 * B / D**2),
            "13": -w * c * ((B + 2) / B**2 + (A + B) / (B * D) + 3 * A / D**2),
            "33": w * ga * (1 + 3 * (al + be) + 9 * al * be + 6 * ga**2),
            "42": -w * (be * (1 + al) * (1 + 3 * be) + 2 * ga**2 * (1 + 6 * be)),
            "24": -w * (al * (1 + be) * (1 + 3 * al) + 2 * ga**2 * (1 + 6 * al)),
        }
    if spec.code == RELU:
        sab = np.sqrt(a * b)
        det = np.maximum(a * b - c * c, 0.0)
        theta = np.arccos(np.clip(c / sab, -1, 1))
        sdet = np.sqrt(det)
        with np.errstate(divide="ignore", invalid="ignore"):
            return {
                "00": (sdet + (np.pi - theta) * c) / (2 * np.pi),
                "11": (np.pi - theta) / (2 * np.pi),
                "20": sdet / (2 * np.pi * a),
                "02": sdet / (2 * np.pi * b),
                "22": 1 / (2 * np.pi * sdet),
                "31": -c / (2 * np.pi * a * sdet),
                "13": -c / (2 * np.pi * b * sdet),
            }
    steps = {ERF: ERF_BY_QUADRATURE_STEP, GELU: GELU_BY_QUADRATURE_STEP}
    h = steps.get(spec.code, spec.quadrature_step)
    return _trapezoid_moments(activation, c, a, b, h)


def _trapezoid_moments(activation: str, c, a, b, h: float) -> dict[str, np.ndarray]:
    """The trapezoid rule of :func:`jacntk.kernels._moments._quadrature_moments` with step ``h``,
    on arrays of pairs (each pair's grid padded to the largest one, padded nodes weighted
    zero)."""
    R = 9.0
    sa = np.sqrt(a)
    hu = np.minimum(h / np.maximum(1.0, np.abs(c / a)), 0.5 * sa)
    nk = (R * sa / hu).astype(int) + 1
    s = np.sqrt(np.maximum(b - c * c / a, 0.0))
    with np.errstate(divide="ignore"):
        ht = np.where(s > 0, np.minimum(h / s, 0.5), 0.5)
    nl = (R / ht).astype(int) + 1
    k = np.arange(-nk.max(), nk.max() + 1)
    l = np.arange(-nl.max(), nl.max() + 1)
    u = k * hu[..., None]  # (..., K)
    wk = np.where(np.abs(k) <= nk[..., None], np.exp(-0.5 * u * u / a[..., None]), 0.0)
    wk /= wk.sum(axis=-1, keepdims=True)
    t = l * ht[..., None]  # (..., L)
    wl = np.where(np.abs(l) <= nl[..., None], np.exp(-0.5 * t * t), 0.0)
    wl /= wl.sum(axis=-1, keepdims=True)
    U = derivatives(activation, u)
    V = derivatives(
        activation,
        (c / a)[..., None, None] * u[..., :, None] + s[..., None, None] * t[..., None, :],
    )
    G = [np.einsum("...kl,...l->...k", Vj, wl) for Vj in V]
    return {
        f"{i}{j}": np.einsum("...k,...k,...k->...", wk, U[i], G[j])
        for i, j in ((0, 0), (1, 1), (2, 0), (0, 2), (2, 2), (3, 1), (1, 3), (3, 3), (4, 2), (2, 4))
    }


def reference_fields(
    arch: MLP, X1, X2=None, *, kind: str = "ntk", jacobian: bool = True
) -> np.ndarray:
    """Reference of :func:`jacntk.kernels._compute.compute_tile`: (8, n1, n2) fields, or (n1, n2)
    values."""
    check_kind(arch, kind, jacobian)
    A, B, symmetric = as_pair(X1, X2)
    d = A.shape[1]
    act = arch.activation
    relu = get_activation(act).code == RELU
    om, sb2 = arch.sigma_w**2, arch.sigma_b**2
    P = A @ B.T
    q1, q2 = np.sum(A * A, axis=1), np.sum(B * B, axis=1)
    if symmetric:
        np.fill_diagonal(P, q1)

    def chain(q):
        v, vp = [om * q / d + sb2], [np.full_like(q, om / d)]
        for _ in range(arch.depth - 1):
            F = moments(act, v[-1], v[-1], v[-1])
            vp.append(om * (F["11"] + F["20"]) * vp[-1])
            v.append(om * F["00"] + sb2)
        return v, vp

    v1, vp1 = chain(q1)
    v2, vp2 = chain(q2)
    zero = np.zeros_like(P)
    S = dict.fromkeys(_JETS, zero)
    S[""] = om * P / d + sb2
    S["p"] = np.full_like(P, om / d)
    T = dict(S)
    for layer in range(arch.depth):
        a, b = v1[layer][:, None], v2[layer][None, :]
        aq, br = vp1[layer][:, None], vp2[layer][None, :]
        F = moments(act, S[""], a, b)
        coll = anti = np.zeros(P.shape, bool)
        if relu:
            degenerate = a * b - S[""] ** 2 <= COLLINEAR_TOL * a * b
            coll, anti = degenerate & (S[""] > 0), degenerate & (S[""] <= 0)
            F = {k: np.where(degenerate, 0.0, v) for k, v in F.items()}
            F["00"] = np.where(coll, 0.5 * np.sqrt(a * b), F["00"])
            F["11"] = np.where(coll, 0.5, F["11"])

        def step(G, S=S, a_q=aq, b_r=br):
            """Jets of omega E[phi^(i) phi^(j)] given the moment table shifted by G."""
            c = S
            return {
                "": om * G["00"],
                "p": om * G["11"] * c["p"],
                "q": om * (G["11"] * c["q"] + 0.5 * G["20"] * a_q),
                "r": om * (G["11"] * c["r"] + 0.5 * G["02"] * b_r),
                "pp": om * (G["22"] * c["p"] ** 2 + G["11"] * c["pp"]),
                "pq": om
                * (G["22"] * c["p"] * c["q"] + 0.5 * G["31"] * c["p"] * a_q + G["11"] * c["pq"]),
                "pr": om
                * (G["22"] * c["p"] * c["r"] + 0.5 * G["13"] * c["p"] * b_r + G["11"] * c["pr"]),
                "qr": om
                * (
                    G["22"] * c["q"] * c["r"]
                    + 0.5 * G["13"] * c["q"] * b_r
                    + 0.5 * G["31"] * c["r"] * a_q
                    + 0.25 * G["22"] * a_q * b_r
                    + G["11"] * c["qr"]
                ),
            }

        nS = step(F)
        nS[""] = nS[""] + sb2
        for key in _JETS[1:]:  # theta = 0: every jet scales by omega / 2; theta = pi: zero
            nS[key] = np.where(coll, 0.5 * om * S[key], np.where(anti, 0.0, nS[key]))
        if kind == "ntk" and "33" in F:
            up = {
                "00": F["11"],
                "11": F["22"],
                "20": F["31"],
                "02": F["13"],
                "22": F["33"],
                "31": F["42"],
                "13": F["24"],
            }
            D = step(up)
            T = {
                "": nS[""] + D[""] * T[""],
                **{m: nS[m] + D[m] * T[""] + D[""] * T[m] for m in ("p", "q", "r")},
                "pp": nS["pp"] + D["pp"] * T[""] + 2 * D["p"] * T["p"] + D[""] * T["pp"],
                "pq": nS["pq"]
                + D["pq"] * T[""]
                + D["p"] * T["q"]
                + D["q"] * T["p"]
                + D[""] * T["pq"],
                "pr": nS["pr"]
                + D["pr"] * T[""]
                + D["p"] * T["r"]
                + D["r"] * T["p"]
                + D[""] * T["pr"],
                "qr": nS["qr"]
                + D["qr"] * T[""]
                + D["q"] * T["r"]
                + D["r"] * T["q"]
                + D[""] * T["qr"],
            }
        elif kind != "nngp":  # truncated; also the ReLU NTK value (same (0,0) entry)
            sdot = om * F["11"]
            T = {m: nS[m] + sdot * T[m] for m in _JETS}
        S = nS
    res = S if kind == "nngp" else T
    out = arch.kappa**2 * np.stack([np.broadcast_to(res[m], P.shape) for m in _JETS])
    return out if jacobian else out[0]


def reference_augment(fields: np.ndarray, X1: np.ndarray, X2: np.ndarray) -> np.ndarray:
    """Dense augmented matrix from (8, n1, n2) fields by NumPy broadcasting and ``einsum`` (the
    block formula of :mod:`jacntk.kernels._blocks`), point-major (n1 (d+1), n2 (d+1))."""
    K, Kp, Kq, Kr, Kpp, Kpq, Kpr, Kqr = np.asarray(fields, dtype=np.float64)
    A, B = np.asarray(X1, dtype=np.float64), np.asarray(X2, dtype=np.float64)
    n1, d = A.shape
    n2 = B.shape[0]
    G = np.empty((n1, d + 1, n2, d + 1))
    G[:, 0, :, 0] = K
    G[:, 0, :, 1:] = Kp[:, :, None] * A[:, None, :] + 2.0 * Kr[:, :, None] * B[None, :, :]
    G[:, 1:, :, 0] = (
        Kp[:, :, None] * B[None, :, :] + 2.0 * Kq[:, :, None] * A[:, None, :]
    ).transpose(0, 2, 1)
    J = np.einsum("ij,ia,ib->iajb", 2.0 * Kpq, A, A)
    J += np.einsum("ij,ja,ib->iajb", Kpp, B, A)
    J += np.einsum("ij,ja,jb->iajb", 2.0 * Kpr, B, B)
    J += np.einsum("ij,ia,jb->iajb", 4.0 * Kqr, A, B)
    idx = np.arange(d)
    J[:, idx, :, idx] += Kp[None, :, :]
    G[:, 1:, :, 1:] = J
    return G.reshape(n1 * (d + 1), n2 * (d + 1))
