"""The sample input image of the img2img and inpaint starters: a 64x64 RGBA digit whose
transparent part is what inpainting redraws (the same picture as examples/input/digit.png).
Kept as base64 in a module so it ships with the package without package_data."""

from __future__ import annotations

import base64

__all__ = ["DIGIT_PNG_NAME", "digit_png"]

DIGIT_PNG_NAME = "digit.png"

_DIGIT_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAYAAACqaXHeAAALzElEQVR4nMVb2XLbRhBsgLhBgJSUPCTlyv9/mpNKLJHE"
    "TYDIg6vHjRVkRyStbNUWD1EEpneOnoPePM8zrlhN0+B4POJwOOD5+Rn//PMPnp+f8fz8jL///ht//vknPn/+jM+fP+Ov"
    "v/7Cly9fcDqdcLlcFt8TxzGyLENRFCjLEg8PD/j111/x+++/49OnT/jjjz/w6dMn/Pbbb/jll19QFAU2m801t7y6/Gv/"
    "8XK54HK5YJomXC4XEMd5nm0DgOd52Gw28H0fQRC8+h7P8xbfyf/lc31Pv/de6yoAxnG0PU3Tq9fTNAH4KpzneSY8geAK"
    "gsA+w7UmsG5Xg25dr4/kP6xhGBb7fD7jfD4bCLxZnv5ms0EYhojjeCGE7/sLUPg31S6+R2A/BABVZz7y+fl8Rtu2r3bX"
    "dei6DsMwmCYAX085jmMkSYLL5QLP80xAAK8AmOd5oUmuZnGrJqkG3QyAqhoRV/SHYUDTNDidTjgej3h5ecHhcMDxeERd"
    "16jrGl3XGQBhGCJNU8zzjCiK0Pc9xnHE+XxeaAIA+37+ve97DMNgj9S0IAjg+z5834fneaZt1wCxqgGXy8Vuwt1936Oq"
    "KgPgcDjYrqrKADifz/A8D3EcAwCiKLLvoFB93y+cKM1oGAZ0XYe+702r+PkoirDZbBYg3KINqxowTZMJS9XmbtsWVVWZ"
    "8Hw8nU5omsaEp5omSYIoihYm1HUdmqZB0zRo29aAmKbJhOe1+FmaGgG4XC7mWAGYNrx3rWqAAtA0jZ1sXdem/jz1l5cX"
    "04iu6zCOI4Cvth1FEaIoQhiGCMMQvu9jHEf7zsPhYNejrfu+vwCcoPIxjuMFD6DqX+sHVjXgcrksTup4PNqu69psn++d"
    "TifUdW0nHwQBsixDkiRI0xR5niNNU4RhaABEUWQ233WdAcHX6lipJQRAwydP3vd98wV3AYC2qCr/8vKysH2+rusabdva"
    "6SdJgjiOzQSKokBRFIjjGNM0oaoqAEDXdajrGr7v2zXnebbwSgDUF9AZBkGAIAgWJOya9aYTVBAIhGsOfI+nxRNguGPs"
    "T9MUWZYhTVPz/G3bIkkShGFoDFHZH02CjlHN5Hw+mwYpcbobAABesa+1i3mehyAIEIah/d33fcRxjDiOTTh+xnVYb9mu"
    "fv/avudaBUDti2yNQtCxZVmGeZ7N2TGuU+3zPEcURXa6DIvjOKLvewuJyu6UGSqD1E1A+blbQXkTAL2BKIosa6OQURQh"
    "SRITZhxHEyQIAiRJgizL4Ps+pmmyzw3DgNPphKqqzK5JmnhNgkwGyUc+J7D3AOEVADx55e9ZluF8PptwaZqaMEpTSWNd"
    "7dHTJpEicSJr5GdV8DRNzX9wp2lqoZWA3QLCqgYwe+Mpn89nU/ckSUzoNT+hrFETJnrztm1R1/UCAEYPXlMByLIMeZ4v"
    "HmkKBOFaErQKgGoAAaDah2FoYLhxmAAoeToej8YnTqeTscW6rlFVlUWQaZrM7MIwXAjPvd1uTQN48hT+rgAA3zSANwN8"
    "tU/Gcd4sHRK5+DRNRpw2mw36vgcA9H1vPIJssmka0w4CzMzR1QBV/yRJXkWRWyLEqgaogAxJm83GPLZ6Z/X04zgasWHi"
    "AmCRQZ5OJ2N2jBx6Pdo3nR21kMDwO1XYnxIFaAYEgGyNvkBvUAGY5xlN0yAMQzMN+gCePhMmrQmQU9D0CAafu9p2r/Vd"
    "HqAAMO/mDWs44qJz0vyeSZVbPFHHp+akIVBjP23+3uu7GsDT1tcEgDfsLqWymlJTeDdp8jwPURQt/A4fXeHvffqrANCe"
    "KLQLCAFYOw1ydRYwNJvTTeJDgLmVbWqYuzXUvQsABULDnOYAazfDio7GfgWBFR16fQAL7VLhefo/S+11fRcAnroKP8/z"
    "oohJcNxSFzdpMsmRW9V1o44+qsrTtD7MCWpxQR2gvu8yQLdErhTZXSQwa4mOgs+iLL+XNcafCgCFXnvtCuPW7bXIqeGU"
    "Hl65hMvp1da1JkFtatvWQPvpAPwICAA/VGeSGFLZvu+NTzCjZMjjyWsUodCk1iRmSZIsymLKAm8uib1nrVFR5fPb7Ra7"
    "3Q4PDw9W8Mzz3MxCtUB9CQWvqsqE1bSaGaESJH7mfwNAE6g0TbHdbrHf79G2LS6XC6IoQp7nqOvanKNGFQrIztPxeFyY"
    "wziOaNsWeZ5bYsRym/Ye3rtuAkCB0BQ6TVOUZYlhGKwjtN1ucTgcFnSYBRGCwZqDS6bIJU6nE7bbrRVZi6JYFFOu8Q03"
    "A7Bm96wcsTO03W7x+PiIw+GwSIqOxyOqqlrUBdTjM4dgCk3hd7sd2rY1wLR4817ecHcN4KK3zrLMTIHCHg4HfPnyBUmS"
    "WJZJp8cT5akzda7rGnmeoygKo9PzPFsKnaYppml6txbcRQMosIJBR1gUhZ0oT//5+dn6Bur0+JrCKZVumgZ5nqNpmkV5"
    "jpWiPM+tLvkesnQ3DQC+tbppClpGn6bJnBhPSVvtNAMKp+1xdxaBCdR2u0VVVSiKwvwJTeFDAVAQNAy59sh4z3BW17VV"
    "iPVkPc+zdhmdId/3PA9Jkpg5aeO0bVvjB8wz3rq3uwPwX9Zms0Ge51Y33O12i3Y6ACNGTdNY8qQ5hxZetcha1zWSJIHn"
    "eeYLtMegJvq/AQB8K6sXRbEojjBikCuwdKbtds0RaBpkiVmWWa9wHMdFQUXrCq/u56MBAGBeuyxLO3lGjLIsLUyy8do0"
    "jTk45gzkDYwQh8PBOk/DMFh3mv5AU3tdAYD7Vxl+sKgFrCFyjKYoCguT2oKnrevsAYDFxArzBDpKnVMiR1m9l48RebmY"
    "COV5br1EakRVVdhut8jzfFF3DILAukgEYBxHdF2HqqosyWLNgX7DjUju+l8AAL71D6kNWZZZmNRsD8CigToMAwCYH+i6"
    "zlSbYZNFG23PUxte3cfHiPt6udOj2lKnMJxLSNPU4jydnKbMWqvQFh57mjq76K6rAHhrLFYv8FYM1kfGa31NwqSqz/9R"
    "4d1qk2ala13rtwYs3w2AlsHcKpBeREfYdLuzBwqYbmWQTJDIBim4Vo40JddZQx3suAsAwLeGhzsqq87HLXWvzfYpKO4I"
    "jDumx6SIjpCqzufa0ndPfk1DrwaAp0L7JFnhBKh2kunodFxOmZlqgQ5Iai+BcV4B0K6S21nW0Vp38Hpt3QwAOXnbtqae"
    "2uIiISEpeWuogRpFWsvZQ+YK5AMEgKEU+DaTuCb0jwaobgJA5wB4czonxGEKdVzuaAuw7CGq4ASCRKiqKvR9byqvxVVe"
    "Y80Rf29d5QM0TdXBaba9GIY4Fscb49/cpodOpronrwAwFJI96pygOlalvT8qlF6lASQhWq+jrY7jaHNBSj7I3d3QprPJ"
    "bKFTYGaKzAqV3mr4o/27TVU38twFAF5cw6C2xZjZMSS6au6qvwJAH0AAdIjCjfc6wsPNCRISKg5Wf08LbmaCGmIIigqu"
    "wmuO7oJJjaKtux5fIwvpM/sOu90O+/0eu90OZVmiKAqj1CRUb4FwNQAuodGQpkkJB6d4Gq46rvUXCYKO0MRxvFB3Fkj3"
    "+z32+z0eHh6w3++x3W5RliXKsrTeAcPv2roKAGVdOixBAekj6CjVDtdCkoKgLTF6fPIJhtEkSVCWpXWdHh8fTQPYhmMD"
    "hfPIWiK7KwBaddFwRE6gnJ32/hY1XRuUJgA0HVaNyrLE4+Oj7YeHB+x2O/MD6hPuCoDbCnMHG1QL6Bh1RsAFRL/TBYN/"
    "1+EpFk72+z2enp7w9PRkIOx2u4UD1GmTu/qANQD0Uc2Ant0NZW4m5w498qZ1eIp1A9f2n56eTAPU8yvneKtjdBMA6gTd"
    "yU0FQH8Bwu6PqwFaH9CuMa+jc8u0c/7clv6gLEurJ7hpN5/fBQAuFXyN3irF1Z++aOUGwMLGtV1Oz62T6+w4uQPV3B/W"
    "Hv8RyprLM3dwfypHskSKzMImTcAdzNKIowkXewnvFf5qANYE1/f1FyaamioYKpxGBc4JrLG/Nb+jNPiadbfe4Br6blVH"
    "M0PVAOb1zPDWQqX6HL52awvXrH8BkdElVuLefYEAAAAASUVORK5CYII="
)


def digit_png() -> bytes:
    """The PNG file's bytes."""
    return base64.b64decode(_DIGIT_PNG_B64)
