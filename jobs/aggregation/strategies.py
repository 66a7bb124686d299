"""Server strategies: what the server does with the round's aggregate.

Every strategy takes the current global weights ``w`` (f32[d]) and the round's weighted mean
client delta ``mean_delta`` (f32[d], the ``finish()`` of a ``StreamingFold`` over ``w_k - w``)
and returns the next global weights as a new f32[d]. Flower's strategies average client
*weights*; averaging deltas is the same in exact arithmetic (``mean(w_k) = w + mean(w_k - w)``)
and is what norm bounding, compression and differential privacy need.

State (moments, momentum, control variate, step) is explicit on the object and round-trips
through ``state_bytes()`` / ``load_state()`` (an ``.npz`` without pickles). Hyperparameter names
and defaults follow Flower's current ``flwr.serverapp`` strategies (``eta``, ``eta_l``,
``beta_1``, ``beta_2``, ``tau`` = 1e-3) so a job configured for Flower behaves the same here.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np

from jobs.aggregation.validation import validate_update, validate_weight


def _save(arrays: dict[str, np.ndarray | None], scalars: dict[str, float]) -> bytes:
    buffer = io.BytesIO()
    payload = {name: value for name, value in arrays.items() if value is not None}
    payload.update({f"scalar_{name}": np.float64(value) for name, value in scalars.items()})
    np.savez(buffer, **payload)
    return buffer.getvalue()


def _load(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


@dataclass
class FedAvg:
    """FedAvg (McMahan et al. 2017): the next model is the weighted mean of the clients'."""

    def step(self, *, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        """w + mean_delta (both f32[d]) as a new f32[d]."""
        return (weights.astype(np.float64) + mean_delta).astype(np.float32)

    def state_bytes(self) -> bytes:
        return _save({}, {})

    def load_state(self, data: bytes) -> None:
        _load(data)


@dataclass
class FedProx(FedAvg):
    """FedProx (Li et al. 2020): the proximal term ``mu/2 ||w - w_t||²`` is added by each client
    to its local loss (the training kernel's ``proximal_mu``); the server step is FedAvg's.

    ``proximal_mu`` lives here only so the round configuration sent to clients has one source.
    """

    proximal_mu: float = 0.01


@dataclass
class FedAvgM:
    """FedAvg with server momentum (Hsu et al. 2019), Flower's convention (PyTorch SGD):

    g = w - aggregate = -mean_delta;  m = g on the first step, else beta·m + g;
    w' = w - server_learning_rate · m.
    """

    server_learning_rate: float = 1.0
    server_momentum: float = 0.0
    momentum: np.ndarray | None = field(default=None, repr=False)

    def step(self, *, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        pseudo_gradient = -mean_delta.astype(np.float64)
        if self.server_momentum > 0.0:
            if self.momentum is None:
                self.momentum = pseudo_gradient
            else:
                self.momentum = self.server_momentum * self.momentum + pseudo_gradient
            pseudo_gradient = self.momentum
        new = weights.astype(np.float64) - self.server_learning_rate * pseudo_gradient
        return new.astype(np.float32)

    def state_bytes(self) -> bytes:
        return _save({"momentum": self.momentum}, {})

    def load_state(self, data: bytes) -> None:
        self.momentum = _load(data).get("momentum")


@dataclass
class _FedOpt:
    """Adaptive server optimisers (Reddi et al. 2021, "Adaptive Federated Optimization").

    delta = mean_delta;  m = beta_1·m + (1 - beta_1)·delta;  v per subclass;
    w' = w + eta_t · m / (sqrt(v) + tau).  ``eta_l`` is the client learning rate (sent to
    clients with the round; unused by the server). Moments start at zero, as in Flower.
    """

    eta: float = 1e-1
    eta_l: float = 1e-1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    m: np.ndarray | None = field(default=None, repr=False)
    v: np.ndarray | None = field(default=None, repr=False)
    steps: int = 0

    def step(self, *, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        """One server step (weights, mean_delta: f32[d]) → f32[d]; moments kept in float64."""
        delta = mean_delta.astype(np.float64)
        if self.m is None:
            self.m = np.zeros_like(delta)
        if self.v is None:
            self.v = np.zeros_like(delta)
        self.steps += 1
        self.m = self.beta_1 * self.m + (1.0 - self.beta_1) * delta
        self.v = self._second_moment(self.v, delta * delta)
        new = weights.astype(np.float64) + self._eta_t() * self.m / (np.sqrt(self.v) + self.tau)
        return new.astype(np.float32)

    def _second_moment(self, v: np.ndarray, delta_squared: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _eta_t(self) -> float:
        return self.eta

    def state_bytes(self) -> bytes:
        return _save({"m": self.m, "v": self.v}, {"steps": self.steps})

    def load_state(self, data: bytes) -> None:
        state = _load(data)
        self.m, self.v = state.get("m"), state.get("v")
        self.steps = int(state["scalar_steps"])


@dataclass
class FedAdam(_FedOpt):
    """FedAdam: v = beta_2·v + (1 - beta_2)·delta², with Adam's bias correction.

    The correction follows Flower (``eta·sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))`` at step
    t = 1, 2, …, i.e. Flower's server round + 1) so the same hyperparameters give the same
    trajectory; Reddi et al.'s Algorithm 2 has no correction (set ``bias_correction=False``).
    """

    bias_correction: bool = True

    def _second_moment(self, v: np.ndarray, delta_squared: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1.0 - self.beta_2) * delta_squared

    def _eta_t(self) -> float:
        if not self.bias_correction:
            return self.eta
        t = self.steps + 1.0
        return self.eta * math.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)


@dataclass
class FedYogi(_FedOpt):
    """FedYogi: v = v - (1 - beta_2)·delta²·sign(v - delta²) (Flower's defaults)."""

    eta: float = 1e-2
    eta_l: float = 0.0316

    def _second_moment(self, v: np.ndarray, delta_squared: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta_2) * delta_squared * np.sign(v - delta_squared)


@dataclass
class FedAdagrad(_FedOpt):
    """FedAdagrad: v = v + delta²; Flower fixes beta_1 = 0 (m is the last delta)."""

    beta_1: float = 0.0
    beta_2: float = 0.0

    def _second_moment(self, v: np.ndarray, delta_squared: np.ndarray) -> np.ndarray:
        return v + delta_squared


@dataclass
class ScaffoldServer:
    """SCAFFOLD's server side (Karimireddy et al. 2020, Algorithm 1, lines 16–17).

    Clients upload Δy_i = y_i - x and Δc_i = c_i⁺ - c_i; the server folds each into its own
    ``StreamingFold`` with equal weights and calls ``step`` with both means:
    x' = x + eta_g · mean(Δy);  c' = c + (|S| / N) · mean(Δc).
    ``control`` (f64[d]) is sent to the next cohort with the model.
    """

    total_clients: int
    global_learning_rate: float = 1.0
    control: np.ndarray | None = field(default=None, repr=False)

    def step(
        self,
        *,
        weights: np.ndarray,
        mean_delta: np.ndarray,
        mean_control_delta: np.ndarray,
        participants: int,
    ) -> np.ndarray:
        """Update the control variate in place on this object; return the next f32[d] model."""
        if not 0 < participants <= self.total_clients:
            raise ValueError("participants must be in 1..total_clients")
        if self.control is None:
            self.control = np.zeros(weights.shape[0], dtype=np.float64)
        self.control = self.control + (participants / self.total_clients) * mean_control_delta
        new = weights.astype(np.float64) + self.global_learning_rate * mean_delta
        return new.astype(np.float32)

    def control_f32(self, dimension: int) -> np.ndarray:
        """The control variate to send to clients (zeros before the first round): f32[d]."""
        if self.control is None:
            return np.zeros(dimension, dtype=np.float32)
        return self.control.astype(np.float32)

    def state_bytes(self) -> bytes:
        return _save({"control": self.control}, {"total_clients": self.total_clients})

    def load_state(self, data: bytes) -> None:
        state = _load(data)
        self.control = state.get("control")
        self.total_clients = int(state["scalar_total_clients"])


class QFedAvgFold:
    """q-FedAvg (Li et al. 2020, "Fair Resource Allocation in Federated Learning"), streaming.

    For each client k with delta Δ_k = w_k - w (f32[d]) and training loss F_k at w:
    L = 1 / client_learning_rate;  g_k = -L·Δ_k;  Δ'_k = F_k^q · g_k;
    h_k = q·F_k^(q-1)·||g_k||² + L·F_k^q;  w' = w - ΣΔ'_k / Σh_k.
    Both sums fold as updates arrive (O(d) memory). Matches Flower's ``QFedAvg``
    (``flwr.serverapp``: per-client train loss, ``+1e-10`` inside the powers).
    """

    def __init__(self, weights: np.ndarray, *, q: float = 0.1, client_learning_rate: float) -> None:
        if client_learning_rate <= 0.0:
            raise ValueError("client_learning_rate must be positive")
        self.weights = weights.astype(np.float32, copy=True)
        self.q = q
        self.lipschitz = 1.0 / client_learning_rate
        self._sum_delta = np.zeros(weights.shape[0], dtype=np.float64)
        self.sum_h = 0.0
        self._folded_ids: set[str] = set()

    def fold(
        self, update_id: str, delta: np.ndarray, loss: float, *, max_norm: float | None = None
    ) -> bool:
        """Fold one client's delta (f32[d]) and its loss once; False if already folded."""
        if update_id in self._folded_ids:
            return False
        loss = float(loss)
        if not math.isfinite(loss) or loss < 0.0:
            raise ValueError(f"loss must be finite and >= 0: {loss}")
        norm = validate_update(delta, dimension=self.weights.shape[0], max_norm=max_norm)
        loss_q = float(np.float_power(loss + 1e-10, self.q))
        gradient_norm_squared = (self.lipschitz * norm) ** 2
        self._sum_delta -= (loss_q * self.lipschitz) * delta.astype(np.float64)
        self.sum_h += (
            self.q * float(np.float_power(loss + 1e-10, self.q - 1.0)) * gradient_norm_squared
            + self.lipschitz * loss_q
        )
        self._folded_ids.add(update_id)
        return True

    def finish(self) -> np.ndarray:
        """The next global weights f32[d]."""
        if not self._folded_ids:
            raise ValueError("no update has been folded")
        return (self.weights.astype(np.float64) - self._sum_delta / self.sum_h).astype(np.float32)

    def checkpoint(self) -> bytes:
        """The exact state (weights, sums, q, L, folded ids) as an ``.npz``."""
        return _save(
            {
                "weights": self.weights,
                "sum_delta": self._sum_delta,
                "ids": np.array(sorted(self._folded_ids), dtype=np.str_),
            },
            {"q": self.q, "lipschitz": self.lipschitz, "sum_h": self.sum_h},
        )

    @classmethod
    def restore(cls, data: bytes) -> QFedAvgFold:
        """Rebuild a fold from ``checkpoint()``; refolding the same ids is then a no-op."""
        state = _load(data)
        fold = cls(
            state["weights"],
            q=float(state["scalar_q"]),
            client_learning_rate=1.0 / float(state["scalar_lipschitz"]),
        )
        fold.lipschitz = float(state["scalar_lipschitz"])  # exact, not 1 / (1 / L)
        fold._sum_delta[:] = state["sum_delta"]
        fold.sum_h = float(state["scalar_sum_h"])
        fold._folded_ids = {str(update_id) for update_id in state["ids"]}
        return fold


def fold_weight(examples: int, *, staleness: int = 0, staleness_exponent: float = 0.5) -> float:
    """Fold weight for buffered-async FL: examples · (1 + staleness)^-a (FedBuff's polynomial)."""
    if staleness < 0:
        raise ValueError("staleness must be >= 0")
    return validate_weight(examples) * (1.0 + staleness) ** -staleness_exponent
