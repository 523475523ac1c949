"""LAMB as a torch.optim.Optimizer (You et al. 2020, Alg. 2, with NVIDIA apex
FusedLAMB's conventions: bias correction, eps outside the square root, trust
ratio ||w|| / ||u|| taken as 1 when either norm is 0, and no layer adaptation
for parameter groups with weight_decay 0). The reference for Phalanx's LAMB in
end-to-end training tests."""
import torch


class Lamb(torch.optim.Optimizer):
    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
                t, m, v = state["step"], state["m"], state["v"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                r = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + group["eps"])
                u = r + group["weight_decay"] * p
                ratio = 1.0
                if group["weight_decay"] != 0:
                    w_norm, u_norm = p.double().norm().item(), u.double().norm().item()
                    if w_norm > 0 and u_norm > 0:
                        ratio = w_norm / u_norm
                p.add_(u, alpha=-group["lr"] * ratio)
