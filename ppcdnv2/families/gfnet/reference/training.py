"""A PyTorch reference of GFNet training written by us with upstream's layout and arithmetic
(blackfeather-wang/GFNet-Pytorch ``train.py``, ``network.py`` ``Memory`` / ``ActorCritic.act`` /
``ActorCritic.evaluate`` / ``PPO``, ``utils.adjust_learning_rate``, ``configs.train_configurations``); the
parity target of :mod:`ppcdnv2.families.gfnet.training`.

It keeps upstream's structure: a ``Memory`` of lists (the acting GRU's hidden state included), a ``PPO``
object whose ``policy_old`` acts, an SGD optimizer with the groups ``model``, [``model_prime``], ``fc``,
and one function for the body of ``train()``'s batch loop. Randomness is injected (the stage-1 positions,
the policy's standard-normal draws), which is what ``torch.rand`` / ``MultivariateNormal.sample`` would
produce. Deliberate differences from ``train.py``, shared with the Paddle port: the glance interpolation
is the configuration's (``train.py`` always uses bicubic), and the deep-supervision head is the backbone's
``classify`` (``train.py`` reads ``.module.fc`` also for DenseNet, which has ``classifier``).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .gfnet import get_patch, get_prime

__all__ = ["TRAIN_CONFIGURATIONS", "DROP_RATES", "PPO_DEFAULTS", "Memory", "gaussian", "act", "evaluate", "PPO",
           "build_optimizer", "adjust_learning_rate", "set_modes", "train_batch"]

# upstream configs.py train_configurations (the values, per backbone family)
TRAIN_CONFIGURATIONS: Dict[str, dict] = {
    "resnet": dict(backbone_lr=0.01, fc_stage_1_lr=0.1, fc_stage_3_lr=0.01, weight_decay=1e-4, momentum=0.9,
                   Nesterov=True, batch_size=256, dsn_ratio=1, epoch_num=60, train_model_prime=True),
    "densenet": dict(backbone_lr=0.01, fc_stage_1_lr=0.1, fc_stage_3_lr=0.01, weight_decay=1e-4, momentum=0.9,
                     Nesterov=True, batch_size=256, dsn_ratio=1, epoch_num=60, train_model_prime=True),
    "efficientnet": dict(backbone_lr=0.005, fc_stage_1_lr=0.1, fc_stage_3_lr=0.01, weight_decay=1e-4, momentum=0.9,
                         Nesterov=True, batch_size=256, dsn_ratio=5, epoch_num=30, train_model_prime=False),
    "mobilenetv3": dict(backbone_lr=0.005, fc_stage_1_lr=0.1, fc_stage_3_lr=0.01, weight_decay=1e-4, momentum=0.9,
                        Nesterov=True, batch_size=256, dsn_ratio=5, epoch_num=90, train_model_prime=False),
    "regnet": dict(backbone_lr=0.02, fc_stage_1_lr=0.1, fc_stage_3_lr=0.01, weight_decay=5e-5, momentum=0.9,
                   Nesterov=True, batch_size=256, dsn_ratio=1, epoch_num=60, train_model_prime=True),
}
# train.py's create_model(drop_rate=..., drop_connect_rate=...) for the geffnet backbones
DROP_RATES: Dict[str, tuple] = {"mobilenetv3": (0.2, 0.2), "efficientnet": (0.3, 0.2)}
# network.PPO's constructor defaults and train.py's stage-2 length
PPO_DEFAULTS = dict(action_std=0.1, lr=0.0003, betas=(0.9, 0.999), gamma=0.7, K_epochs=1, eps_clip=0.2,
                    stage2_epochs=15)


class Memory:
    """Upstream's rollout memory (lists, time-major; ``hidden`` is the acting GRU's state)."""

    def __init__(self):
        self.actions: List[torch.Tensor] = []
        self.states: List[torch.Tensor] = []
        self.logprobs: List[torch.Tensor] = []
        self.rewards: List[torch.Tensor] = []
        self.is_terminals: List[torch.Tensor] = []
        self.hidden: List[torch.Tensor] = []

    def clear_memory(self):
        for entries in (self.actions, self.states, self.logprobs, self.rewards, self.is_terminals, self.hidden):
            del entries[:]


def gaussian(action_mean: torch.Tensor, action_std: float) -> torch.distributions.MultivariateNormal:
    """Upstream's policy distribution: ``scale_tril = diag(full(2, action_std))`` (the tensor is named
    ``action_var`` upstream but used as the standard deviation)."""
    scale = torch.diag(torch.full((2,), action_std, dtype=action_mean.dtype))
    return torch.distributions.MultivariateNormal(action_mean, scale_tril=scale)


def act(policy: nn.Module, state_ini: torch.Tensor, memory: Memory, restart_batch: bool, noise: torch.Tensor,
        action_std: float = 0.1) -> torch.Tensor:
    """``ActorCritic.act(..., training=True)`` with the standard-normal draw given: sample
    ``mean + scale_tril @ noise``, clamp to [0, 1] with two ReLUs, store state / action / log-probability."""
    if restart_batch:
        del memory.hidden[:]
        memory.hidden.append(torch.zeros(1, state_ini.size(0), policy.hidden_state_dim, dtype=state_ini.dtype))
    state = state_ini if policy.policy_conv else state_ini.flatten(1)
    state = policy.state_encoder(state)
    state, hidden_output = policy.gru(state.view(1, state.size(0), state.size(1)), memory.hidden[-1])
    memory.hidden.append(hidden_output)
    action_mean = policy.actor(state[0])
    dist = gaussian(action_mean, action_std)
    eps = noise.to(action_mean.dtype).unsqueeze(-1)
    action = (action_mean + torch.matmul(dist.scale_tril, eps).squeeze(-1)).detach()
    action = F.relu(action)
    action = 1 - F.relu(1 - action)
    memory.states.append(state_ini)
    memory.actions.append(action)
    memory.logprobs.append(dist.log_prob(action))
    return action.detach()


def evaluate(policy: nn.Module, state: torch.Tensor, action: torch.Tensor, action_std: float = 0.1):
    """``ActorCritic.evaluate``: log-probabilities, critic values and entropies, each [S, B]."""
    seq_l, batch_size = state.size(0), state.size(1)
    if not policy.policy_conv:
        state = state.flatten(2)
        state = state.view(seq_l * batch_size, state.size(2))
    else:
        state = state.view(seq_l * batch_size, state.size(2), state.size(3), state.size(4))
    state = policy.state_encoder(state)
    state = state.view(seq_l, batch_size, -1)
    state, _ = policy.gru(state, torch.zeros(1, batch_size, state.size(2), dtype=state.dtype))
    state = state.view(seq_l * batch_size, -1)
    action_mean = policy.actor(state)
    dist = gaussian(action_mean, action_std)
    action_logprobs = dist.log_prob(torch.squeeze(action.view(seq_l * batch_size, -1)))
    dist_entropy = dist.entropy()
    state_value = policy.critic(state)
    return (action_logprobs.view(seq_l, batch_size), state_value.view(seq_l, batch_size),
            dist_entropy.view(seq_l, batch_size))


class PPO:
    """Upstream ``PPO`` around a given policy module (``policy_old`` a copy, synced after each update)."""

    def __init__(self, policy: nn.Module, policy_old: nn.Module, action_std=0.1, lr=0.0003, betas=(0.9, 0.999),
                 gamma=0.7, K_epochs=1, eps_clip=0.2):
        self.lr, self.betas, self.gamma, self.eps_clip, self.K_epochs = lr, betas, gamma, eps_clip, K_epochs
        self.action_std = action_std
        self.policy = policy
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr, betas=betas)
        self.policy_old = policy_old
        self.policy_old.load_state_dict(self.policy.state_dict())
        self.MseLoss = nn.MSELoss()

    def select_action(self, state, memory, noise, restart_batch=False):
        return act(self.policy_old, state, memory, restart_batch, noise, self.action_std)

    def update(self, memory: Memory) -> dict:
        """The update, returning the loss terms of the last epoch (upstream returns nothing)."""
        rewards = []
        discounted_reward = 0
        for reward in reversed(memory.rewards):
            discounted_reward = reward + (self.gamma * discounted_reward)
            rewards.insert(0, discounted_reward)
        rewards = torch.cat(rewards, 0)
        rewards = (rewards - rewards.mean()) / (rewards.std() + 1e-5)

        old_states = torch.stack(memory.states, 0).detach()
        old_actions = torch.stack(memory.actions, 0).detach()
        old_logprobs = torch.stack(memory.logprobs, 0).detach()

        terms = {}
        for _ in range(self.K_epochs):
            logprobs, state_values, dist_entropy = evaluate(self.policy, old_states, old_actions, self.action_std)
            ratios = torch.exp(logprobs - old_logprobs.detach())
            advantages = rewards - state_values.detach()
            surr1 = ratios * advantages
            surr2 = torch.clamp(ratios, 1 - self.eps_clip, 1 + self.eps_clip) * advantages
            value_loss = 0.5 * self.MseLoss(state_values, rewards)
            loss = -torch.min(surr1, surr2) + value_loss - 0.01 * dist_entropy
            self.optimizer.zero_grad()
            loss.mean().backward()
            self.optimizer.step()
            terms = dict(loss=float(loss.mean()), policy_loss=float((-torch.min(surr1, surr2)).mean()),
                         value_loss=float(value_loss), entropy=float(dist_entropy.mean()), returns=rewards.numpy())
        self.policy_old.load_state_dict(self.policy.state_dict())
        return terms


def build_optimizer(model_prime: nn.Module, model: nn.Module, fc: nn.Module, train_configuration: dict):
    """``train.py``'s SGD for stages 1/3: groups ``model``, [``model_prime``], ``fc``; lr set per epoch."""
    groups = [{"params": model.parameters()}]
    if train_configuration["train_model_prime"]:
        groups.append({"params": model_prime.parameters()})
    groups.append({"params": fc.parameters()})
    return torch.optim.SGD(groups, lr=0, momentum=train_configuration["momentum"],
                           nesterov=train_configuration["Nesterov"],
                           weight_decay=train_configuration["weight_decay"])


def adjust_learning_rate(optimizer, train_configuration: dict, epoch: int, training_epoch_num: int,
                         train_stage: int) -> List[float]:
    """``utils.adjust_learning_rate``: half cosine per epoch for the backbones and ``fc``."""
    backbone_lr = 0.5 * train_configuration["backbone_lr"] * (1 + math.cos(math.pi * epoch / training_epoch_num))
    key = "fc_stage_1_lr" if train_stage == 1 else "fc_stage_3_lr"
    fc_lr = 0.5 * train_configuration[key] * (1 + math.cos(math.pi * epoch / training_epoch_num))
    lrs = [backbone_lr, backbone_lr, fc_lr] if train_configuration["train_model_prime"] else [backbone_lr, fc_lr]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    return lrs


def set_modes(model_prime, model, fc, train_configuration: dict, train_stage: int) -> None:
    """The modes at the top of ``train()``."""
    if train_stage == 2:
        model_prime.eval(), model.eval(), fc.eval()
    else:
        model_prime.train(train_configuration["train_model_prime"])
        model.train(), fc.train()


def _dropout(x, module, drop_rate):
    # upstream's geffnet forward: F.dropout on the output vector when drop_rate > 0
    return F.dropout(x, p=drop_rate, training=module.training) if drop_rate > 0.0 else x


def train_batch(model_prime, model, fc, x, target, train_configuration: dict, train_stage: int, T: int,
                patch_size: int, prime_interpolation: str, optimizer=None, ppo: Optional[PPO] = None,
                memory: Optional[Memory] = None, actions: Optional[Sequence[torch.Tensor]] = None,
                noises: Optional[Sequence[torch.Tensor]] = None, drop_rate: float = 0.0) -> dict:
    """One iteration of ``train()``'s batch loop (modes set by :func:`set_modes` first). Stage 1 crops at
    ``actions[t-1]``; stages 2/3 let ``ppo.policy_old`` sample with ``noises[t-1]``. Stages 1/3 take an SGD
    step, stage 2 a PPO update. Returns the loss, per-step losses and, for stage 2, the PPO terms."""
    memory = memory if memory is not None else Memory()
    set_modes(model_prime, model, fc, train_configuration, train_stage)
    glance_with_fc = fc.fc_rnn  # ResNet / DenseNet / RegNet in train.py's name test
    loss_cla, loss_list_dsn = [], []
    input_prime = get_prime(x, patch_size, prime_interpolation)
    if train_configuration["train_model_prime"] and train_stage != 2:
        output, state = model_prime(input_prime)
        output = _dropout(output, model_prime, drop_rate)
        output_dsn = model_prime.classify(output)
        output = fc(output, restart=True)
    else:
        with torch.no_grad():
            output, state = model_prime(input_prime)
            output = _dropout(output, model_prime, drop_rate)
            if glance_with_fc:
                output_dsn = model_prime.classify(output)
                output = fc(output, restart=True)
            else:
                _ = fc(output, restart=True)
                output = model_prime.classify(output)
                output_dsn = output
    state = state.detach()
    loss_cla.append(F.cross_entropy(output, target))
    loss_list_dsn.append(F.cross_entropy(output_dsn, target))
    confidence_last = torch.gather(F.softmax(output.detach(), 1), dim=1, index=target.view(-1, 1)).view(1, -1)
    used_actions = []
    for patch_step in range(1, T):
        if train_stage == 1:
            action = actions[patch_step - 1]
        else:
            action = ppo.select_action(state, memory, noises[patch_step - 1], restart_batch=patch_step == 1)
        used_actions.append(action)
        patches = get_patch(x, action, patch_size)
        if train_stage != 2:
            output, state = model(patches)
            output = _dropout(output, model, drop_rate)
            output_dsn = model.classify(output)
            output = fc(output, restart=False)
        else:
            with torch.no_grad():
                output, state = model(patches)
                output_dsn = model.classify(output)
                output = fc(output, restart=False)
        state = state.detach()
        loss_cla.append(F.cross_entropy(output, target))
        loss_list_dsn.append(F.cross_entropy(output_dsn, target))
        confidence = torch.gather(F.softmax(output.detach(), 1), dim=1, index=target.view(-1, 1)).view(1, -1)
        memory.rewards.append(confidence - confidence_last)
        confidence_last = confidence
    loss = (sum(loss_cla) + train_configuration["dsn_ratio"] * sum(loss_list_dsn)) / T
    out = dict(loss=float(loss), losses=[float(v) for v in loss_cla], dsn_losses=[float(v) for v in loss_list_dsn],
               rewards=[r.detach().clone() for r in memory.rewards], actions=torch.stack(used_actions))
    if train_stage != 2:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    else:
        out["memory"] = dict(states=[s.clone() for s in memory.states], actions=[a.clone() for a in memory.actions],
                             logprobs=[lp.clone() for lp in memory.logprobs])
        out["ppo"] = ppo.update(memory)
    memory.clear_memory()
    return out
