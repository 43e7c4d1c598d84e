"""The programs a user runs, above the rooms they use: training (train.py, started as `python -m distributed.main`
or by torchrun) and ./run.sh's launcher (launch.py). `python -m results` uses one trained net."""
