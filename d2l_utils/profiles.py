"""Run profiles: one notebook, three compute budgets.

The course's notebooks use the book's settings (``lr, num_epochs, batch_size = 0.05, 10, 256``,
``resize=96``) in their code.  Those settings take hours on a laptop CPU, so the environment
variable ``D2L_PROFILE`` picks how much of that work is actually done:

``full``
    The book's settings, unchanged.  Default when a GPU (CUDA or Apple MPS) is present.
``quick``
    Default on a CPU.  A stratified 30,720 of the 60,000 training images (120 whole batches of
    256, so no epoch ends with a small batch), all 10,000 test images, at most 4 epochs, images
    resized to at most 32 px.  Notebooks that compare settings over several seeds pass a smaller
    budget per run (``dataclasses.replace`` of this profile, in their settings cell), so that all
    seven notebooks run in about 40 minutes on a 2-core CPU.
``smoke``
    For tests and CI.  The 2,000/1,000-image sample bundled with the package (no download), one
    epoch, images resized to at most 32 px.  Each notebook executes in well under a minute.

Whenever a profile changes what the code asked for, :func:`d2l_utils.load_data` and
:func:`d2l_utils.train_ch6` print one line that says exactly what changed.
"""

from __future__ import annotations

import dataclasses
import os

__all__ = ["PROFILES", "Profile", "default_profile_name", "get_profile"]


@dataclasses.dataclass(frozen=True)
class Profile:
    """A compute budget.  ``None`` in a limit means "no limit"."""

    name: str
    train_limit: int | None  # training images kept (stratified subset)
    test_limit: int | None  # test images kept (stratified subset)
    max_epochs: int | None  # epochs actually run
    max_resize: int | None  # largest image side in pixels
    use_sample: bool  # read the bundled sample instead of the full dataset

    def __str__(self) -> str:
        if self.name == "full":
            return "profile full: the book's settings, unchanged"
        parts = []
        if self.use_sample:
            parts.append("the bundled 2,000/1,000-image sample")
        if self.train_limit is not None:
            parts.append(f"at most {self.train_limit:,} training images")
        if self.test_limit is not None:
            parts.append(f"at most {self.test_limit:,} test images")
        if self.max_epochs is not None:
            parts.append(f"at most {self.max_epochs} epoch{'s' if self.max_epochs > 1 else ''}")
        if self.max_resize is not None:
            parts.append(f"images at most {self.max_resize} px")
        return f"profile {self.name}: " + ", ".join(parts)


PROFILES: dict[str, Profile] = {
    "full": Profile("full", None, None, None, None, use_sample=False),
    "quick": Profile("quick", 30_720, None, 4, 32, use_sample=False),
    "smoke": Profile("smoke", None, None, 1, 32, use_sample=True),
}


def _has_gpu() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def default_profile_name() -> str:
    """``full`` when a GPU (CUDA or MPS) is present, else ``quick``."""
    return "full" if _has_gpu() else "quick"


def get_profile(profile: str | Profile | None = None) -> Profile:
    """Return the profile named by ``profile``, else by ``D2L_PROFILE``, else the default.

    Raises:
        ValueError: for a name that is not ``smoke``, ``quick`` or ``full``.
    """
    if isinstance(profile, Profile):
        return profile
    source = "profile"
    if profile is None:
        profile = os.environ.get("D2L_PROFILE", "").strip()
        source = "D2L_PROFILE"
        if not profile:
            return PROFILES[default_profile_name()]
    name = profile.strip().lower()
    if name not in PROFILES:
        raise ValueError(
            f"{source}={profile!r} is not a known run profile; expected one of "
            f"{', '.join(sorted(PROFILES))}"
        )
    return PROFILES[name]
