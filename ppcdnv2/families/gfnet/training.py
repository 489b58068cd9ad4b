"""GFNet training in Paddle: upstream ``train.py``'s three stages as step functions an engine loop can call.

* Stage 1 (:func:`train_step`, ``stage=1``): patches at uniform random positions; trains the local encoder
  ``model``, the classifier ``fc`` and, for ResNet / DenseNet / RegNet, the glance encoder ``model_prime``
  (frozen, in eval mode and without gradients, for MobileNetV3 / EfficientNet). Loss
  ``(sum_t CE(fc_t) + dsn_ratio * sum_t CE(backbone.classify(feature_t))) / T``. SGD, Nesterov momentum,
  weight decay on every parameter; learning rates ``lr * (1 + cos(pi * epoch / epochs)) / 2`` set once per
  epoch (no warm-up), separately for the backbones and ``fc`` (:func:`build_optimizer`,
  :func:`set_epoch_lr`).
* Stage 2 (:func:`ppo_step`): everything but the policy frozen and in eval mode; a rollout with the acting
  copy ``policy_old`` fills a :class:`Memory`, then one clipped PPO update (:class:`PPO`) on it, then the
  copy is synced.
* Stage 3 (:func:`train_step`, ``stage=3``): stage 1 with the patches chosen by the policy (actions sampled
  around the actor's mean, the policy not updated) and ``fc`` at its stage-3 learning rate.

Randomness is injectable for parity tests and reproducible runs: stage-1 positions ``[T-1, B, 2]`` in
[0, 1) and the policy's standard-normal noise ``[T-1, B, 2]`` can be passed in; otherwise they are drawn
from a ``numpy.random.Generator`` (upstream draws both from torch's generator). MobileNetV3 / EfficientNet
train the local encoder with dropout on its vector and drop-connect in its residual blocks, as upstream
builds them for training; those masks come from Paddle's generator.

Upstream facts that are resolved here (each also stated where it acts):

* the glance is resized with the configuration's ``prime_interpolation`` (inference.py's per-configuration
  choice); upstream ``train.py`` always uses bicubic (``utils.get_prime``'s default). Use
  ``cfg.replace(prime_interpolation="bicubic")`` to reproduce ``train.py`` exactly;
* the deep-supervision head is the backbone's ``classify`` for every backbone; ``train.py`` reads
  ``model.module.fc`` for DenseNet too, whose head is ``classifier`` (it crashes there);
* step 0 of the cascade classifier (MobileNetV3, EfficientNet) has no prediction: as upstream, the glance
  backbone's classifier stands in for it (in both loss sums, frozen, so it only shifts the loss value).
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle
import paddle.nn.functional as F

from ...configs import ConfigBase
from .config import PRESETS, GFNetConfig
from .model import ActorCritic, GFNet, crop_patches, get_prime, patch_coords

__all__ = ["GFNetTrainConfig", "TRAIN_PRESETS", "KINDS", "backbone_kind", "train_config", "STAGES",
           "prepare_stage", "parameter_groups", "build_optimizer", "cosine_factor", "stage_learning_rates",
           "set_epoch_lr", "cross_entropy", "uniform_positions", "standard_normal", "sample_action",
           "gaussian_log_prob", "gaussian_entropy", "discounted_returns", "normalise_returns",
           "true_class_confidence", "Memory", "evaluate_actions", "PPO", "PPOTerms", "StepResult", "stage_loss",
           "train_step", "rollout", "ppo_step", "copy_policy"]

STAGES = (1, 2, 3)
KINDS = ("resnet", "densenet", "regnet", "mobilenetv3", "efficientnet")
_PREFIX_TO_KIND = (("resnet", "resnet"), ("densenet", "densenet"), ("regnet", "regnet"),
                   ("mobilenetv3", "mobilenetv3"), ("efficientnet", "efficientnet"))


def backbone_kind(backbone: str) -> Optional[str]:
    """The upstream family a backbone name belongs to (``train_configurations``' key); ``None`` for a
    backbone upstream never trained."""
    for prefix, kind in _PREFIX_TO_KIND:
        if backbone.startswith(prefix):
            return kind
    return None


# -- hyperparameters --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GFNetTrainConfig(ConfigBase):
    """The training hyperparameters of one GFNet configuration (upstream ``configs.train_configurations``
    per backbone family, the PPO constants of ``network.PPO``, the drop rates ``train.py`` builds the
    MobileNetV3 / EfficientNet encoders with).

    ``epochs_stage1`` and ``epochs_stage3`` are both upstream's ``epoch_num``; stage 2 runs 15 epochs.
    ``fc_lr_stage1`` / ``fc_lr_stage3`` are ``fc``'s base learning rates; ``backbone_lr`` is that of both
    encoders. ``train_model_prime``: the glance encoder is trained in stages 1/3 (else frozen in eval mode).
    ``dropout`` acts on the local encoder's vector, ``drop_connect`` is the last block's drop-connect rate
    (earlier blocks linearly less), both only in training mode.
    """

    kind: str = "resnet"
    backbone_lr: float = 0.01
    backbone_lr_stage3: Optional[float] = None  # None: backbone_lr, as upstream (a restart at a lower rate)
    fc_lr_stage1: float = 0.1
    fc_lr_stage3: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    batch_size: int = 256
    dsn_ratio: float = 1.0
    epochs_stage1: int = 60
    epochs_stage2: int = 15
    epochs_stage3: int = 60
    train_model_prime: bool = True
    dropout: float = 0.0
    drop_connect: float = 0.0
    ppo_lr: float = 3e-4
    ppo_betas: Tuple[float, float] = (0.9, 0.999)
    gamma: float = 0.7
    ppo_epochs: int = 1
    clip_eps: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    action_std: float = 0.1
    return_eps: float = 1e-5

    family_title: ClassVar[str] = "GFNet training"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "ppo_betas", tuple(float(b) for b in self.ppo_betas))
        for name in ("batch_size", "epochs_stage1", "epochs_stage2", "epochs_stage3", "ppo_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("dropout", "drop_connect"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.action_std <= 0:
            raise ValueError(f"action_std must be positive, got {self.action_std!r}")

    def epochs(self, stage: int) -> int:
        return {1: self.epochs_stage1, 2: self.epochs_stage2, 3: self.epochs_stage3}[_check_stage(stage)]

    def backbone_lr_of(self, stage: int) -> float:
        """The encoders' base rate in ``stage`` (1 or 3); upstream uses ``backbone_lr`` for both."""
        if _check_stage(stage) == 3 and self.backbone_lr_stage3 is not None:
            return self.backbone_lr_stage3
        return self.backbone_lr

    def fc_lr(self, stage: int) -> float:
        if _check_stage(stage) == 2:
            raise ValueError("stage 2 trains the policy only (PPO, Adam at ppo_lr); fc has no learning rate")
        return self.fc_lr_stage1 if stage == 1 else self.fc_lr_stage3


def _check_stage(stage: int) -> int:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return stage


# upstream configs.py train_configurations (configs.py:142-203) and train.py's drop rates (train.py:92-103)
_KIND_HPARAMS: Dict[str, Dict[str, Any]] = {
    "resnet": dict(backbone_lr=0.01, weight_decay=1e-4, dsn_ratio=1.0, epochs_stage1=60, epochs_stage3=60,
                   train_model_prime=True),
    "densenet": dict(backbone_lr=0.01, weight_decay=1e-4, dsn_ratio=1.0, epochs_stage1=60, epochs_stage3=60,
                     train_model_prime=True),
    "regnet": dict(backbone_lr=0.02, weight_decay=5e-5, dsn_ratio=1.0, epochs_stage1=60, epochs_stage3=60,
                   train_model_prime=True),
    "mobilenetv3": dict(backbone_lr=0.005, weight_decay=1e-4, dsn_ratio=5.0, epochs_stage1=90, epochs_stage3=90,
                        train_model_prime=False, dropout=0.2, drop_connect=0.2),
    "efficientnet": dict(backbone_lr=0.005, weight_decay=1e-4, dsn_ratio=5.0, epochs_stage1=30, epochs_stage3=30,
                         train_model_prime=False, dropout=0.3, drop_connect=0.2),
}


def _for_kind(kind: str) -> GFNetTrainConfig:
    return GFNetTrainConfig(kind=kind, **_KIND_HPARAMS[kind])


# every preset whose backbone upstream trained (the 14 released configurations)
TRAIN_PRESETS: Dict[str, GFNetTrainConfig] = {
    name: _for_kind(backbone_kind(cfg.backbone)) for name, cfg in PRESETS.items() if backbone_kind(cfg.backbone)
}


def train_config(cfg: Union[str, GFNetConfig]) -> GFNetTrainConfig:
    """The training hyperparameters of a preset name (``gfnet_`` optional) or of any config's backbone."""
    if isinstance(cfg, GFNetConfig):
        kind = backbone_kind(cfg.backbone)
        if kind is None:
            raise KeyError(f"no upstream training configuration for backbone {cfg.backbone!r}; "
                           f"known kinds: {', '.join(KINDS)} (build a GFNetTrainConfig)")
        return _for_kind(kind)
    key = cfg[len("gfnet_"):] if cfg.startswith("gfnet_") else cfg
    if key not in TRAIN_PRESETS:
        raise KeyError(f"no GFNet training preset {cfg!r}; known: {', '.join(TRAIN_PRESETS)}")
    return TRAIN_PRESETS[key]


# -- modes, parameters, optimizer, schedule ----------------------------------------------------------
def prepare_stage(model: GFNet, hp: GFNetTrainConfig, stage: int) -> None:
    """Train/eval modes as upstream ``train()`` sets them, and the encoders' drop-connect rates.

    Stage 2: everything in eval mode (the policy has neither BatchNorm nor dropout). Stages 1/3: ``model``
    and ``fc`` train; ``model_prime`` trains only with ``hp.train_model_prime``. Cheap; every step calls it,
    so a validation pass in between cannot leave the wrong modes behind.
    """
    _check_stage(stage)
    model.eval()
    if stage != 2:
        model.model.train()
        model.fc.train()
        if hp.train_model_prime:
            model.model_prime.train()
    from .backbones.efficientnet import EfficientNet
    from .backbones.geffnet_blocks import set_drop_connect
    from .backbones.mobilenetv3 import MobileNetV3

    for backbone in (model.model_prime, model.model):  # upstream builds both with the same rates
        if isinstance(backbone, (MobileNetV3, EfficientNet)):
            set_drop_connect(backbone.blocks, hp.drop_connect)


def _trainable(layer) -> List[paddle.Tensor]:
    return [p for p in layer.parameters() if not p.stop_gradient]  # BN statistics are stop_gradient


def parameter_groups(model: GFNet, hp: GFNetTrainConfig, stage: int) -> List[Dict[str, Any]]:
    """Upstream's SGD groups, in its order: ``model``, [``model_prime``], ``fc``; ``learning_rate`` is the
    group's base rate (Paddle multiplies it by the optimizer's rate, here the cosine factor)."""
    fc_lr, backbone_lr = hp.fc_lr(stage), hp.backbone_lr_of(stage)
    groups = [{"params": _trainable(model.model), "learning_rate": backbone_lr}]
    if hp.train_model_prime:
        groups.append({"params": _trainable(model.model_prime), "learning_rate": backbone_lr})
    groups.append({"params": _trainable(model.fc), "learning_rate": fc_lr})
    for g in groups:
        g["weight_decay"] = float(hp.weight_decay)
    return groups


def cosine_factor(epoch: int, epochs: int) -> float:
    """``(1 + cos(pi * epoch / epochs)) / 2``: upstream's per-epoch cosine without warm-up."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def stage_learning_rates(hp: GFNetTrainConfig, stage: int, epoch: int) -> Dict[str, float]:
    """The effective learning rates of an epoch (``utils.adjust_learning_rate``): backbones and ``fc``."""
    c = cosine_factor(epoch, hp.epochs(stage))
    return {"backbone": c * hp.backbone_lr_of(stage), "fc": c * hp.fc_lr(stage)}


def build_optimizer(model: GFNet, hp: GFNetTrainConfig, stage: int, epoch: int = 0) -> paddle.optimizer.Momentum:
    """SGD (Paddle ``Momentum``, Nesterov, L2 weight decay on every trained parameter) for stage 1 or 3, at
    ``epoch``'s learning rate. Paddle stores the per-group rate on the parameters themselves: build one
    optimizer per stage."""
    if _check_stage(stage) == 2:
        raise ValueError("stage 2 trains the policy with PPO: use PPO(model.policy, hp)")
    return paddle.optimizer.Momentum(learning_rate=cosine_factor(epoch, hp.epochs(stage)), momentum=hp.momentum,
                                     use_nesterov=hp.nesterov, parameters=parameter_groups(model, hp, stage))


def set_epoch_lr(optimizer: paddle.optimizer.Optimizer, hp: GFNetTrainConfig, stage: int,
                 epoch: int) -> Dict[str, float]:
    """Set an optimizer of :func:`build_optimizer` to ``epoch``'s rates (once per epoch, as upstream);
    returns them."""
    optimizer.set_lr(cosine_factor(epoch, hp.epochs(stage)))
    return stage_learning_rates(hp, stage, epoch)


# -- losses and the Gaussian policy ------------------------------------------------------------------
def _at_least_float32(x: paddle.Tensor) -> paddle.Tensor:
    return x if x.dtype in (paddle.float32, paddle.float64) else x.astype("float32")


def cross_entropy(logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """Mean ``-log softmax(logits)[label]`` (at least float32) via ``logsumexp``: Paddle's own cross
    entropy clips log-probabilities at -64, torch's (upstream's) does not."""
    x = _at_least_float32(logits)
    logp = x - paddle.logsumexp(x, axis=1, keepdim=True)
    return -paddle.take_along_axis(logp, labels.reshape([-1, 1]).astype("int64"), axis=1).mean()


def true_class_confidence(logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """``softmax(logits)[label]`` per image, [B], without gradient (the reward's ingredient)."""
    sm = F.softmax(_at_least_float32(logits.detach()), axis=1)
    return paddle.take_along_axis(sm, labels.reshape([-1, 1]).astype("int64"), axis=1)[:, 0]


def sample_action(mean: paddle.Tensor, noise: paddle.Tensor, std: float) -> paddle.Tensor:
    """A Gaussian action around ``mean`` with std ``std`` from standard-normal ``noise``, clamped to [0, 1]
    as upstream (``1 - relu(1 - relu(a))``, kept for its float32 rounding)."""
    a = F.relu(mean + std * noise.astype(mean.dtype))
    return 1.0 - F.relu(1.0 - a)


def gaussian_log_prob(mean: paddle.Tensor, action: paddle.Tensor, std: float) -> paddle.Tensor:
    """Log-density of ``action`` under the isotropic Gaussian ``N(mean, std^2 I)`` (last axis: the 2-D
    action); upstream's ``MultivariateNormal(mean, scale_tril=diag(std))``."""
    k = mean.shape[-1]
    z = (action - mean) / std
    return -0.5 * (k * math.log(2.0 * math.pi) + (z * z).sum(axis=-1)) - k * math.log(std)


def gaussian_entropy(mean: paddle.Tensor, std: float) -> paddle.Tensor:
    """Entropy of that Gaussian, shaped like ``mean[..., 0]`` (a constant: the std is fixed)."""
    k = mean.shape[-1]
    value = 0.5 * k * (1.0 + math.log(2.0 * math.pi)) + k * math.log(std)
    return paddle.full(mean.shape[:-1], value, mean.dtype)


def discounted_returns(rewards: Sequence[paddle.Tensor], gamma: float) -> paddle.Tensor:
    """``R_t = r_t + gamma * R_{t+1}`` per image, [S, B] from S rewards [B] (upstream: no terminal)."""
    out: List[paddle.Tensor] = []
    running: Union[float, paddle.Tensor] = 0.0
    for r in reversed(list(rewards)):
        running = r + gamma * running
        out.insert(0, running)
    return paddle.stack(out)


def normalise_returns(returns: paddle.Tensor, eps: float = 1e-5) -> paddle.Tensor:
    """``(R - mean) / (std + eps)`` over all steps and images together (std with Bessel's correction)."""
    return (returns - returns.mean()) / (paddle.std(returns) + eps)


def uniform_positions(rng: np.random.Generator, steps: int, batch: int) -> np.ndarray:
    """Stage 1's patch positions: [steps, batch, 2] uniform in [0, 1), float32."""
    return rng.random((steps, batch, 2), dtype=np.float32)


def standard_normal(rng: np.random.Generator, steps: int, batch: int) -> np.ndarray:
    """The policy's exploration noise: [steps, batch, 2] standard normal, float32."""
    return rng.standard_normal((steps, batch, 2), dtype=np.float32)


def _as_tensor(x) -> paddle.Tensor:
    return x if isinstance(x, paddle.Tensor) else paddle.to_tensor(np.asarray(x, np.float32))


# -- the rollout memory and the PPO update -----------------------------------------------------------
@dataclass
class Memory:
    """One batch's rollout (upstream ``Memory``), time-major lists of S = T - 1 entries: the feature map
    the policy acted on [B, C, k, k], the clamped action [B, 2], its log-probability under the acting policy
    [B], and the reward [B]."""

    states: List[paddle.Tensor] = field(default_factory=list)
    actions: List[paddle.Tensor] = field(default_factory=list)
    logprobs: List[paddle.Tensor] = field(default_factory=list)
    rewards: List[paddle.Tensor] = field(default_factory=list)

    def clear(self) -> None:
        for entries in (self.states, self.actions, self.logprobs, self.rewards):
            del entries[:]

    def __len__(self) -> int:
        return len(self.rewards)


def evaluate_actions(policy: ActorCritic, states: paddle.Tensor, actions: paddle.Tensor, std: float
                     ) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Upstream ``ActorCritic.evaluate``: the policy re-run over a stored sequence of states [S, B, C, k, k]
    from a zero GRU state; ``(log-probabilities of the stored actions [S, B, 2], critic values, entropies)``,
    each [S, B]."""
    s, b = states.shape[0], states.shape[1]
    flat = states.reshape([s * b] + list(states.shape[2:]))
    encoded = policy.state_encoder(flat if policy.policy_conv else paddle.flatten(flat, 1)).reshape([s, b, -1])
    hidden, outputs = None, []
    for t in range(s):
        hidden = policy.gru(encoded[t], hidden)
        outputs.append(hidden)
    out = paddle.stack(outputs).reshape([s * b, -1])
    mean = policy.actor(out)
    logprobs = gaussian_log_prob(mean, actions.reshape([s * b, -1]), std)
    values = policy.critic(out)
    return logprobs.reshape([s, b]), values.reshape([s, b]), gaussian_entropy(mean, std).reshape([s, b])


@dataclass
class PPOTerms:
    """One PPO update's loss and its parts (float, the last epoch's): ``loss`` = ``policy_loss`` (mean of
    ``-min(surr1, surr2)``) + ``value_loss`` (``value_coef * MSE``) - ``entropy_coef * entropy`` (mean)."""

    loss: float
    policy_loss: float
    value_loss: float
    entropy: float
    clip_fraction: float
    returns: np.ndarray  # [S, B] normalised discounted returns


def copy_policy(policy: ActorCritic) -> ActorCritic:
    """An independent copy, same weights and dtype (upstream's ``policy_old``)."""
    twin = copy.deepcopy(policy)
    twin.eval()
    return twin


class PPO:
    """Upstream ``PPO``: ``policy`` (trained with Adam), ``policy_old`` (acts; synced after every update),
    clipped surrogate with value and entropy terms, ``hp.ppo_epochs`` passes over each batch's memory."""

    def __init__(self, policy: ActorCritic, hp: GFNetTrainConfig,
                 optimizer: Optional[paddle.optimizer.Optimizer] = None):
        self.policy, self.hp = policy, hp
        self.policy_old = copy_policy(policy)
        self.optimizer = optimizer or paddle.optimizer.Adam(
            learning_rate=hp.ppo_lr, beta1=hp.ppo_betas[0], beta2=hp.ppo_betas[1], epsilon=1e-8,
            parameters=policy.parameters())

    def sync(self) -> None:
        """``policy_old`` <- ``policy``."""
        self.policy_old.set_state_dict(self.policy.state_dict())

    @paddle.no_grad()
    def act(self, fmap: paddle.Tensor, hidden: Optional[paddle.Tensor], noise: paddle.Tensor,
            memory: Optional[Memory] = None) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """``policy_old`` samples ``(action [B, 2], new hidden)`` around its mean; records state, action and
        log-probability in ``memory`` when given."""
        return _act(self.policy_old, fmap, hidden, noise, self.hp.action_std, memory)

    def update(self, memory: Memory) -> PPOTerms:
        """The clipped PPO update on one batch's memory, then the sync (upstream ``PPO.update``)."""
        hp = self.hp
        returns = normalise_returns(discounted_returns(memory.rewards, hp.gamma), hp.return_eps)
        old_states = paddle.stack(memory.states).detach()
        old_actions = paddle.stack(memory.actions).detach()
        old_logprobs = paddle.stack(memory.logprobs).detach()
        terms = None
        for _ in range(hp.ppo_epochs):
            logprobs, values, entropy = evaluate_actions(self.policy, old_states, old_actions, hp.action_std)
            ratios = paddle.exp(logprobs - old_logprobs)
            advantages = returns - values.detach()
            surr1 = ratios * advantages
            surr2 = paddle.clip(ratios, 1.0 - hp.clip_eps, 1.0 + hp.clip_eps) * advantages
            policy_term = -paddle.minimum(surr1, surr2)
            value_loss = hp.value_coef * F.mse_loss(values, returns)
            loss = policy_term + value_loss - hp.entropy_coef * entropy
            total = loss.mean()
            self.optimizer.clear_grad(set_to_zero=False)
            total.backward()
            self.optimizer.step()
            clipped = paddle.abs(ratios.detach() - 1.0) > hp.clip_eps
            terms = PPOTerms(loss=float(total), policy_loss=float(policy_term.mean()), value_loss=float(value_loss),
                             entropy=float(entropy.mean()), clip_fraction=float(clipped.astype("float32").mean()),
                             returns=returns.numpy())
        self.sync()
        return terms


def _act(policy: ActorCritic, fmap, hidden, noise, std: float, memory: Optional[Memory]):
    with paddle.no_grad():
        mean, hidden = policy(fmap, hidden)
        action = sample_action(mean, _as_tensor(noise), std)
        if memory is not None:
            memory.states.append(fmap)
            memory.actions.append(action)
            memory.logprobs.append(gaussian_log_prob(mean, action, std))
    return action, hidden


# -- one batch through glance and focus --------------------------------------------------------------
@dataclass
class StepResult:
    """What one step did (numpy / float). ``losses`` / ``dsn_losses``: CE per step [T] of ``fc`` and of the
    backbones' heads; ``correct``: top-1 fraction per step [T]; ``rewards``: mean increase of the
    true-class probability per focus step [T-1]; ``actions`` [T-1, B, 2] the patch positions used."""

    loss: float
    losses: np.ndarray
    dsn_losses: np.ndarray
    correct: np.ndarray
    rewards: np.ndarray
    actions: np.ndarray
    ppo: Optional[PPOTerms] = None


def _vector_dropout(vec: paddle.Tensor, backbone, rate: float) -> paddle.Tensor:
    """Upstream MobileNetV3 / EfficientNet apply dropout to their output vector in training mode."""
    return F.dropout(vec, p=rate, training=True) if rate > 0 and backbone.training else vec


def _no_grad_unless(flag: bool):
    return contextlib.nullcontext() if flag else paddle.no_grad()


def _run_sequence(model: GFNet, images: paddle.Tensor, labels: paddle.Tensor, hp: GFNetTrainConfig,
                  choose: Callable[[int, paddle.Tensor], paddle.Tensor], grad: bool):
    """Glance, then T - 1 focus steps at the positions ``choose(step, previous feature map)`` returns;
    per-step logits of ``fc`` and of the backbones' heads. Without ``grad`` (or with a frozen glance
    encoder) the glance runs without gradients, as upstream's ``torch.no_grad()`` block."""
    cfg = model.cfg
    p = cfg.patch_size
    prime = get_prime(images, p, cfg.prime_interpolation)
    with _no_grad_unless(grad and hp.train_model_prime):
        vec, fmap = model.model_prime(prime)
        vec = _vector_dropout(vec, model.model_prime, hp.dropout)
        dsn = model.model_prime.classify(vec)
        logits, fc_state = model.fc(vec, None)
        if logits is None:  # the cascade has no step-0 prediction: upstream uses the glance head's
            logits = dsn
    all_logits, all_dsn, actions = [logits], [dsn], []
    for step in range(1, cfg.T):
        action = choose(step, fmap.detach())
        actions.append(action)
        patches = crop_patches(images, patch_coords(action, images.shape[2], p), p)
        with _no_grad_unless(grad):
            vec, fmap = model.model(patches)
            vec = _vector_dropout(vec, model.model, hp.dropout)
            all_dsn.append(model.model.classify(vec))
            logits, fc_state = model.fc(vec, fc_state)
            all_logits.append(logits)
    return all_logits, all_dsn, actions


def _summarise(loss, all_logits, all_dsn, actions, labels, ce_fc, ce_dsn) -> StepResult:
    conf = [true_class_confidence(lg, labels) for lg in all_logits]
    rewards = [float((conf[t] - conf[t - 1]).mean()) for t in range(1, len(conf))]
    correct = [float((paddle.argmax(lg, axis=1) == labels.astype("int64")).astype("float32").mean())
               for lg in all_logits]
    return StepResult(loss=float(loss), losses=np.array([float(c) for c in ce_fc]),
                      dsn_losses=np.array([float(c) for c in ce_dsn]), correct=np.array(correct),
                      rewards=np.array(rewards), actions=np.stack([a.numpy() for a in actions])
                      if actions else np.zeros([0, labels.shape[0], 2], np.float32))


def _chooser(model: GFNet, hp: GFNetTrainConfig, stage: int, batch: int, positions, noise, rng, policy,
             memory: Optional[Memory] = None):
    steps = model.cfg.T - 1
    rng = rng if rng is not None else np.random.default_rng()
    if stage == 1:
        pos = _as_tensor(positions if positions is not None else uniform_positions(rng, steps, batch))
        if list(pos.shape) != [steps, batch, 2]:
            raise ValueError(f"positions must be [{steps}, {batch}, 2], got {list(pos.shape)}")
        return lambda step, fmap: pos[step - 1]
    eps = _as_tensor(noise if noise is not None else standard_normal(rng, steps, batch))
    if list(eps.shape) != [steps, batch, 2]:
        raise ValueError(f"noise must be [{steps}, {batch}, 2], got {list(eps.shape)}")
    acting = policy if policy is not None else model.policy
    state = {"hidden": None}

    def choose(step, fmap):
        action, state["hidden"] = _act(acting, fmap, state["hidden"], eps[step - 1], hp.action_std, memory)
        return action

    return choose


def stage_loss(model: GFNet, images: paddle.Tensor, labels: paddle.Tensor, hp: GFNetTrainConfig, stage: int = 1,
               *, positions=None, noise=None, rng: Optional[np.random.Generator] = None,
               policy: Optional[ActorCritic] = None) -> Tuple[paddle.Tensor, StepResult]:
    """Stage 1/3 loss of one batch, ``(sum_t CE(fc_t) + dsn_ratio * sum_t CE(head_t)) / T``, with its
    per-step record. Stage 1 crops at ``positions`` [T-1, B, 2] (default uniform from ``rng``); stage 3 at
    actions sampled by ``policy`` (default ``model.policy``; upstream acts with ``policy_old``, equal to it
    in stage 3) from ``noise`` [T-1, B, 2] (default standard normal from ``rng``). Sets the stage's modes."""
    if _check_stage(stage) == 2:
        raise ValueError("stage 2 has no supervised loss: use ppo_step")
    prepare_stage(model, hp, stage)
    choose = _chooser(model, hp, stage, images.shape[0], positions, noise, rng, policy)
    all_logits, all_dsn, actions = _run_sequence(model, images, labels, hp, choose, grad=True)
    ce_fc = [cross_entropy(lg, labels) for lg in all_logits]
    ce_dsn = [cross_entropy(lg, labels) for lg in all_dsn]
    loss = (sum(ce_fc) + hp.dsn_ratio * sum(ce_dsn)) / model.cfg.T
    return loss, _summarise(loss, all_logits, all_dsn, actions, labels, ce_fc, ce_dsn)


def train_step(model: GFNet, images: paddle.Tensor, labels: paddle.Tensor, optimizer: paddle.optimizer.Optimizer,
               hp: GFNetTrainConfig, stage: int = 1, *, positions=None, noise=None,
               rng: Optional[np.random.Generator] = None, policy: Optional[ActorCritic] = None) -> StepResult:
    """One SGD step of stage 1 or 3 (see :func:`stage_loss`); the optimizer from :func:`build_optimizer`.
    Gradients are left on the parameters until the next step (inspection, parity tests)."""
    loss, result = stage_loss(model, images, labels, hp, stage, positions=positions, noise=noise, rng=rng,
                              policy=policy)
    optimizer.clear_grad(set_to_zero=False)  # unused cascade heads keep no gradient (no decay), as torch
    loss.backward()
    optimizer.step()
    return result


@paddle.no_grad()
def rollout(model: GFNet, images: paddle.Tensor, labels: paddle.Tensor, ppo: PPO, memory: Memory, *, noise=None,
            rng: Optional[np.random.Generator] = None) -> StepResult:
    """Stage 2's rollout: the frozen network (eval mode) runs with ``ppo.policy_old`` choosing patches;
    ``memory`` gets states, actions, log-probabilities and the rewards (increase of the true-class
    probability at every focus step)."""
    prepare_stage(model, ppo.hp, 2)
    choose = _chooser(model, ppo.hp, 2, images.shape[0], None, noise, rng, ppo.policy_old, memory)
    all_logits, all_dsn, actions = _run_sequence(model, images, labels, ppo.hp, choose, grad=False)
    conf = [true_class_confidence(lg, labels) for lg in all_logits]
    for t in range(1, len(conf)):
        memory.rewards.append(conf[t] - conf[t - 1])
    ce_fc = [cross_entropy(lg, labels) for lg in all_logits]
    ce_dsn = [cross_entropy(lg, labels) for lg in all_dsn]
    loss = (sum(ce_fc) + ppo.hp.dsn_ratio * sum(ce_dsn)) / model.cfg.T
    return _summarise(loss, all_logits, all_dsn, actions, labels, ce_fc, ce_dsn)


def ppo_step(model: GFNet, images: paddle.Tensor, labels: paddle.Tensor, ppo: PPO, *, noise=None,
             rng: Optional[np.random.Generator] = None, memory: Optional[Memory] = None) -> StepResult:
    """One stage-2 step: :func:`rollout`, one PPO update on its memory, the memory cleared (upstream
    updates after every batch)."""
    memory = memory if memory is not None else Memory()
    result = rollout(model, images, labels, ppo, memory, noise=noise, rng=rng)
    result.ppo = ppo.update(memory)
    memory.clear()
    return result
