"""``python -m peft_equi_train`` (and ``torchrun -m peft_equi_train``): the ``peft-equi`` command."""

from peft_equi_train.launch import main

main()
