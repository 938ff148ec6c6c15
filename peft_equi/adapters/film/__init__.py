"""FiLM: feature-wise affine modulation of equivariant features."""

from peft_equi.adapters.film.adapter import FilmAdapter
from peft_equi.adapters.film.config import FilmConfig

__all__ = ["FilmAdapter", "FilmConfig"]
