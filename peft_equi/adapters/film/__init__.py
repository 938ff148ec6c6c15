"""FiLM: feature-wise affine modulation of equivariant features."""

from peft_equi.adapters.film.config import FilmConfig
from peft_equi.adapters.film.layer import FilmAdapter

__all__ = ["FilmAdapter", "FilmConfig"]
