"""LPWA (920 MHz) radio modules: receive-frame decoders, the module table, payload profiles, builders and a
simulator of a module on a socat PTY.

* :mod:`hw.lpwa.frames` — pure decoders of IM920, ES920LR and RAK3172 receive lines into :class:`RadioFrame`.
* :mod:`hw.lpwa.modules` — ``MODULES``: per module the decoder, UART speed, replies and init commands.
* :mod:`hw.lpwa.profile` and :mod:`hw.lpwa.payload` — payload profiles as TOML data and ``decode_payload``.
* :mod:`hw.lpwa.build` — the inverse: frame lines and payload bytes from values (simulator and tests).
* :mod:`hw.lpwa.population` and :mod:`hw.lpwa.simulator` — simulated tags and gauges behind a simulated module.
"""

from hw.lpwa.frames import FrameError, RadioFrame, Rak3172Assembler, parse_es920lr, parse_im920, parse_rak3172_p2p
from hw.lpwa.modules import MODULES, LineDecoder, ModuleSpec, P2PRadio
from hw.lpwa.payload import PayloadError, decode_payload
from hw.lpwa.profile import Profile, ProfileError, builtin_profiles, load_profile, load_profile_dir

__all__ = [
    "MODULES",
    "FrameError",
    "LineDecoder",
    "ModuleSpec",
    "P2PRadio",
    "PayloadError",
    "Profile",
    "ProfileError",
    "RadioFrame",
    "Rak3172Assembler",
    "builtin_profiles",
    "decode_payload",
    "load_profile",
    "load_profile_dir",
    "parse_es920lr",
    "parse_im920",
    "parse_rak3172_p2p",
]
