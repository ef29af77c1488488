# bert-ticket: set-up, demo and tests in two commands (see README).
#   make demo   install if needed, then fine-tune + evaluate a tiny BERT on a generated task
#   make test   install if needed, then the default test suite
# torch is installed first and pinned for everything after it: a free resolve would pull a
# newer torch and several GB of CUDA wheels.  Override for a GPU box, e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,deepspeed,tracking
# Two test workers (the CI machine's cores); a file's tests stay on one worker (its fixtures).
PYTEST_ARGS ?= -n 2 --dist loadfile
BIN := $(VENV)/bin
STAMP := $(VENV)/.bert-ticket-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: install
	$(OFFLINE) $(BIN)/bert-ticket rewind experiment=demo output_dir=runs/demo overwrite=true
	$(OFFLINE) $(BIN)/bert-ticket eval task=synthetic eval.checkpoint=runs/demo/rewind/demo/model output_dir=runs/demo

test: install
	$(OFFLINE) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(OFFLINE) $(BIN)/python benchmarks/finetune_throughput.py --quick

clean:
	rm -rf runs/demo .pytest_cache
