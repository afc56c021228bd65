"""Small GANs for the tests: a DCGAN and a WGAN-GP on 8x8 images made in code, each built for
ftrain and as the hand-written PyTorch loop it must match (no shuffling; all noise from one
seeded `torch.Generator`, which the ftrain run keeps in ``state.extras``)."""

import copy

import torch
from torch import nn

import ftrain

NZ = 8


def images(n=384, seed=0):
    """Digit-like 8x8 images in [-1, 1]: a bright bar and a blob at random places."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.arange(8.0)
    rows, cols = grid.view(8, 1), grid.view(1, 8)
    centre = torch.randint(2, 6, (n, 2), generator=g).float()
    width = 1.0 + torch.rand(n, 1, 1, generator=g)
    blob = torch.exp(
        -((rows - centre[:, 0, None, None]) ** 2 + (cols - centre[:, 1, None, None]) ** 2) / width
    )
    bar = (cols == torch.randint(0, 8, (n, 1, 1), generator=g)).float()
    return (torch.clamp(blob + 0.5 * bar, 0, 1) * 2 - 1).unsqueeze(1)


def batches(n_batches, batch_size=16, seed=0):
    data = images(n_batches * batch_size, seed)
    return [data[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]


def generator():
    return nn.Sequential(
        nn.ConvTranspose2d(NZ, 16, 4, 1, 0, bias=False),  # 4x4
        nn.BatchNorm2d(16),
        nn.ReLU(True),
        nn.ConvTranspose2d(16, 1, 4, 2, 1, bias=False),  # 8x8
        nn.Tanh(),
    )


def discriminator(norm=True, sigmoid=True):
    layers = [
        nn.Conv2d(1, 16, 4, 2, 1, bias=False),  # 4x4
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(16, 32, 4, 2, 1, bias=False),  # 2x2
        nn.BatchNorm2d(32) if norm else nn.Identity(),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(32, 1, 2, 1, 0, bias=False),  # 1x1
    ]
    if sigmoid:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers, nn.Flatten(0))


def adam(lr=2e-4, betas=(0.5, 0.999)):
    return lambda params: torch.optim.Adam(params, lr=lr, betas=betas)


# ---------------------------------------------------------------- DCGAN


def d_loss(model, real, ctx):
    """The discriminator's phase: real vs. generated; hands the generated batch to the generator."""
    criterion = nn.BCELoss()
    b = real.size(0)
    err_real = criterion(model["discriminator"](real), torch.full((b,), 1.0))
    noise = torch.randn(b, NZ, 1, 1, generator=ctx.extras["noise"])
    fake = model["generator"](noise)
    err_fake = criterion(model["discriminator"](fake.detach()), torch.full((b,), 0.0))
    return ftrain.Loss(err_real + err_fake, handoff={"fake": fake})


def g_loss(model, real, ctx):
    """The generator's phase: the discriminator, just updated, judges the handed-over batch."""
    fake = ctx.handoff["fake"]
    out = model["discriminator"](fake)
    return nn.functional.binary_cross_entropy(out, torch.full_like(out, 1.0))


def make_dcgan(seed=0, noise_seed=1):
    torch.manual_seed(seed)
    parts = {"generator": generator(), "discriminator": discriminator()}
    return ftrain.TrainState.create(
        model=parts,
        phases=[
            ftrain.Phase("d", optimizes="discriminator", optimizer=adam(), loss_fn=d_loss),
            ftrain.Phase("g", optimizes="generator", optimizer=adam(), loss_fn=g_loss),
        ],
        extras={"noise": torch.Generator().manual_seed(noise_seed)},
        seed=seed,
    )


def reference_dcgan(state, data, noise_seed=1):
    """The PyTorch DCGAN example's loop, by hand, on copies of ``state``'s fresh parts."""
    net_g = copy.deepcopy(state.model["generator"])
    net_d = copy.deepcopy(state.model["discriminator"])
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    criterion = nn.BCELoss()
    gen = torch.Generator().manual_seed(noise_seed)
    losses = []
    for real in data:
        net_d.zero_grad()
        b = real.size(0)
        label = torch.full((b,), 1.0)
        err_real = criterion(net_d(real), label)
        err_real.backward()
        noise = torch.randn(b, NZ, 1, 1, generator=gen)
        fake = net_g(noise)
        label.fill_(0.0)
        err_fake = criterion(net_d(fake.detach()), label)
        err_fake.backward()
        err_d = err_real + err_fake
        opt_d.step()
        net_g.zero_grad()
        label.fill_(1.0)
        err_g = criterion(net_d(fake), label)
        err_g.backward()
        opt_g.step()
        losses.append((err_d.detach(), err_g.detach()))
    return nn.ModuleDict({"generator": net_g, "discriminator": net_d}), losses


# ---------------------------------------------------------------- WGAN-GP

N_CRITIC = 5
GP_WEIGHT = 10.0


def critic_loss(model, real, ctx):
    b = real.size(0)
    gen = ctx.extras["noise"]
    fake = model["generator"](torch.randn(b, NZ, 1, 1, generator=gen)).detach()
    eps = torch.rand(b, 1, 1, 1, generator=gen)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(model["critic"](mixed).sum(), mixed, create_graph=True)
    penalty = ((grad.view(b, -1).norm(2, dim=1) - 1) ** 2).mean()
    critic = model["critic"]
    loss = critic(fake).mean() - critic(real).mean() + GP_WEIGHT * penalty
    return ftrain.Loss(loss, metrics={"gp": penalty.detach()})


def wgan_g_loss(model, real, ctx):
    noise = torch.randn(real.size(0), NZ, 1, 1, generator=ctx.extras["noise"])
    return -model["critic"](model["generator"](noise)).mean()


def make_wgan(seed=0, noise_seed=2):
    torch.manual_seed(seed)
    parts = {"generator": generator(), "critic": discriminator(norm=False, sigmoid=False)}
    opt = adam(lr=1e-4, betas=(0.0, 0.9))
    return ftrain.TrainState.create(
        model=parts,
        phases=[
            ftrain.Phase("critic", optimizes="critic", optimizer=opt, loss_fn=critic_loss),
            ftrain.Phase(
                "g", optimizes="generator", optimizer=opt, loss_fn=wgan_g_loss, every=N_CRITIC
            ),
        ],
        extras={"noise": torch.Generator().manual_seed(noise_seed)},
        seed=seed,
    )


def reference_wgan(state, data, noise_seed=2):
    """WGAN-GP's algorithm by hand: a critic update every step, a generator update after every
    fifth."""
    net_g = copy.deepcopy(state.model["generator"])
    net_c = copy.deepcopy(state.model["critic"])
    opt_c = torch.optim.Adam(net_c.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=1e-4, betas=(0.0, 0.9))
    gen = torch.Generator().manual_seed(noise_seed)
    losses = []
    for i, real in enumerate(data):
        opt_c.zero_grad()
        b = real.size(0)
        fake = net_g(torch.randn(b, NZ, 1, 1, generator=gen)).detach()
        eps = torch.rand(b, 1, 1, 1, generator=gen)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(net_c(mixed).sum(), mixed, create_graph=True)
        penalty = ((grad.view(b, -1).norm(2, dim=1) - 1) ** 2).mean()
        loss_c = net_c(fake).mean() - net_c(real).mean() + GP_WEIGHT * penalty
        loss_c.backward()
        opt_c.step()
        loss_g = None
        if i % N_CRITIC == N_CRITIC - 1:
            opt_g.zero_grad()
            loss_g = -net_c(net_g(torch.randn(b, NZ, 1, 1, generator=gen))).mean()
            loss_g.backward()
            opt_g.step()
            loss_g = loss_g.detach()
        losses.append((loss_c.detach(), loss_g))
    return nn.ModuleDict({"generator": net_g, "critic": net_c}), losses


def loader(n_batches, batch_size=16, seed=0):
    """The same images as `batches`, from a DataLoader (no shuffling), which resumes mid-epoch."""
    from torch.utils.data import DataLoader

    return DataLoader(images(n_batches * batch_size, seed), batch_size=batch_size)


# ---------------------------------------------------------------- distributed


def pair_loader(batch_size, n=96):
    """(image, noise) pairs: the noise is part of the data, so one process with the global batch
    and several processes with their shares of it draw the same noise."""
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(7)
    noise = torch.randn(n, NZ, 1, 1, generator=g)
    return DataLoader(TensorDataset(images(n, seed=3), noise), batch_size=batch_size)


def _pair_d_loss(model, batch, ctx):
    real, noise = batch
    d = model["discriminator"]
    fake = model["generator"](noise)
    err_real = nn.functional.binary_cross_entropy(d(real), torch.ones(len(real)))
    err_fake = nn.functional.binary_cross_entropy(d(fake.detach()), torch.zeros(len(real)))
    return ftrain.Loss(err_real + err_fake, handoff={"fake": fake})


def make_pair_gan(seed=0):
    """A DCGAN without BatchNorm (per-process batch statistics would differ from one process's)
    for the multi-process equivalence test."""
    torch.manual_seed(seed)
    g = nn.Sequential(
        nn.ConvTranspose2d(NZ, 16, 4, 1, 0),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 1, 4, 2, 1),
        nn.Tanh(),
    )
    parts = {"generator": g, "discriminator": discriminator(norm=False)}
    return ftrain.TrainState.create(
        model=parts,
        phases=[
            ftrain.Phase(
                "d", optimizes="discriminator", optimizer=adam(1e-3), loss_fn=_pair_d_loss
            ),
            ftrain.Phase("g", optimizes="generator", optimizer=adam(1e-3), loss_fn=g_loss),
        ],
        seed=seed,
    )
