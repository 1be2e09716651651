# `make test` is the project's test command: a virtual environment with the pinned requirements, then pytest.
# A clean clone installs everything from nothing; later runs reinstall only when a requirements file changes.
PYTHON ?= python3
VENV ?= .venv

# make stack: the Docker Swarm deployment (docker-stack.yml). Each of these, and the ports, replicas and settings
# docker-stack.yml reads, can be set on the command line or in the environment; several stacks run side by side
# with different STACK names and ports.
STACK ?= tabserve
TAG ?= latest
STACK_FILES := .stack/$(STACK)
API_PASSWORD_SECRET ?= $(abspath $(STACK_FILES))/api_password
TLS_SECRET ?= $(abspath $(STACK_FILES))/tls.pem
API_USERS_SECRET ?= $(abspath $(STACK_FILES))/api_users
# The address other swarm nodes reach this one at: the source address of this machine's default route.
ADVERTISE_ADDR ?= $(shell ip route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')

# make publish / canary / promote / rollback: the model repository REPO, models/ unless set (docs/running.md, "Model
# versions"); make stack REPO=models serves it on Swarm (deploy/repository-stack.yml) instead of the image's model.
# REPO=s3://BUCKET/PREFIX is a repository in S3; S3=URL names an S3-compatible server (deploy/s3.yml's is
# http://127.0.0.1:8333), whose keys are those of .s3/credentials (make s3-credentials).
repository := $(or $(REPO),models)
S3_CREDENTIALS ?= .s3/credentials
s3 := $(if $(S3),AWS_ENDPOINT_URL=$(S3) AWS_SHARED_CREDENTIALS_FILE=$(abspath $(S3_CREDENTIALS)) AWS_REGION=us-east-1)

.PHONY: test lint grpc-code train publish signing-key s3-credentials canary promote rollback api web screenshots bench bench-batching bench-web bench-versus bench-models load images stack stack-down s3-stack s3-stack-down clean

$(VENV)/installed: requirements.txt requirements-web.txt requirements-extras.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

# checkov, the infrastructure-as-code scanner (tests/test_checkov.py), in an environment of its own: its hundred
# dependencies would otherwise pin the tests' own.
CHECKOV_VERSION := 3.3.30
.venv-checkov/installed:
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install --quiet --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	touch $@

# grpc-code: tabserve/grpcgen from proto/inference.proto (proto/README.md); its generator in an environment of its own.
GRPC_TOOLS_VERSION := 1.80.0
grpc-code:
	[ -x .venv-protoc/bin/python ] || { $(PYTHON) -m venv .venv-protoc && \
	    .venv-protoc/bin/python -m pip install --quiet --disable-pip-version-check grpcio-tools==$(GRPC_TOOLS_VERSION); }
	.venv-protoc/bin/python -m grpc_tools.protoc -Itabserve/grpcgen=proto --python_out=. --grpc_python_out=. \
	    proto/inference.proto

test: $(VENV)/installed .venv-checkov/installed
	$(VENV)/bin/python -m pytest

lint: $(VENV)/installed  # ruff over the scripts, the package, the tests and the tools (make test runs it too)
	$(VENV)/bin/python -m ruff check .

train: $(VENV)/installed  # make train MODEL=random_forest DATASET=wine, or CSV=my.csv TARGET=y for your own table
	$(VENV)/bin/python train.py $(if $(MODEL),--model $(MODEL)) $(if $(DATASET),--dataset $(DATASET)) \
	    $(if $(CSV),--csv $(CSV) --target $(TARGET)) $(if $(SIGN_KEY),--sign-key $(SIGN_KEY))

publish: $(VENV)/installed  # the next version into REPO, trained as make train's MODEL DATASET CSV say; SIGN_KEY signs it
	$(s3) $(VENV)/bin/python train.py --publish $(repository) $(if $(MODEL),--model $(MODEL)) \
	    $(if $(DATASET),--dataset $(DATASET)) $(if $(CSV),--csv $(CSV) --target $(TARGET)) \
	    $(if $(SIGN_KEY),--sign-key $(SIGN_KEY))

signing-key:  # signing.key and signing.pub: an elliptic-curve key pair for make publish SIGN_KEY=signing.key
	@[ ! -e signing.key ] || { echo "signing.key exists: not replaced"; exit 1; }
	umask 077 && openssl ecparam -name prime256v1 -genkey -noout -out signing.key
	openssl ec -in signing.key -pubout -out signing.pub 2>/dev/null

canary: $(VENV)/installed  # make canary VERSION=2 PERCENT=10: that share of the clients gets version 2
	$(s3) $(VENV)/bin/python -m tabserve.repository canary $(repository) $(VERSION) $(PERCENT)

promote: $(VENV)/installed  # the canary (or VERSION) becomes the default; the one before is kept for a rollback
	$(s3) $(VENV)/bin/python -m tabserve.repository promote $(repository) $(VERSION)

rollback: $(VENV)/installed  # back to the default before the last promotion
	$(s3) $(VENV)/bin/python -m tabserve.repository rollback $(repository)

s3-credentials: $(S3_CREDENTIALS)  # keys for the S3 server of deploy/s3.yml and its clients (make publish S3=...)

$(S3_CREDENTIALS):  # new random keys, in the AWS shared credentials format; never in the repository (.gitignore)
	@mkdir -p $(@D) && chmod 700 $(@D)
	@printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$$(openssl rand -hex 10)" \
	    "$$(openssl rand -hex 20)" > $@ && chmod 644 $@ && echo "wrote $@"

api: $(VENV)/installed
	$(VENV)/bin/python api.py

web: $(VENV)/installed
	$(VENV)/bin/python web.py

screenshots: $(VENV)/installed  # the README's pictures, taken in headless Chromium into docs/images
	SCREENSHOTS_DIR=docs/images $(VENV)/bin/python -m pytest tests/test_browser.py

bench: $(VENV)/installed  # the performance tables of the README (needs wrk and a trained model: make train)
	$(VENV)/bin/python -m tools.bench

bench-batching: $(VENV)/installed  # the adaptive batching table: a random forest here and in MLServer (needs wrk)
	$(VENV)/bin/python -m tools.bench_batching

bench-web: $(VENV)/installed  # the result page's CPU beside the page before explanations (needs wrk, 2 cores, a model)
	$(VENV)/bin/python -m tools.bench_web

bench-models: $(VENV)/installed  # several models side by side, same run: the default classifier, regressors (needs wrk)
	$(VENV)/bin/python -m tools.bench_models

bench-versus: $(VENV)/installed  # this tree's API beside BASE's, same run: make bench-versus BASE=509470e (needs wrk)
	$(VENV)/bin/python -m tools.bench_versus $(if $(BASE),--base $(BASE))

load: $(VENV)/installed  # 100,000 mixed requests, every answer checked (needs a trained model: make train)
	$(VENV)/bin/python -m tools.load

images:  # tabserve-api, tabserve-web and tabserve-lb, tagged TAG; make images DATASET=wine MODEL=random_forest TAG=wine-rf
	docker build -f Dockerfile.api $(if $(MODEL),--build-arg MODEL=$(MODEL)) $(if $(DATASET),--build-arg DATASET=$(DATASET)) \
	    $(if $(EXTRAS),--build-arg EXTRAS=$(EXTRAS)) \
	    -t tabserve-api:$(TAG) .
	docker build -f Dockerfile.web -t tabserve-web:$(TAG) .
	docker build -f Dockerfile.lb -t tabserve-lb:$(TAG) .

$(abspath $(STACK_FILES))/api_password:  # API_PASSWORD, or the demo password; never in the repository (.gitignore)
	@mkdir -p $(@D) && umask 077 && printf '%s\n' "$${API_PASSWORD:-my_password}" > $@

$(abspath $(STACK_FILES))/api_users: | $(API_PASSWORD_SECRET)  # the API's users file, if missing: the web replicas' user
	@mkdir -p $(@D) && umask 077 && docker run --rm -i tabserve-api:$(TAG) python api.py --hash-password \
	    < $(API_PASSWORD_SECRET) | sed "s/^/$${API_USERNAME:-my_username}:/" > $@

$(abspath $(STACK_FILES))/tls.pem:  # a self-signed certificate for localhost, for trying HTTPS out
	@mkdir -p $(@D) && umask 077
	openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=localhost \
	    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout $(@D)/tls.key -out $(@D)/tls.crt 2>/dev/null
	cat $(@D)/tls.crt $(@D)/tls.key > $@

stack: images $(API_PASSWORD_SECRET) $(API_USERS_SECRET) $(TLS_SECRET) $(if $(S3_REPOSITORY),$(S3_CREDENTIALS))  # deploy, wait until healthy
	[ "$$(docker info --format '{{.Swarm.LocalNodeState}}')" = active ] || \
	    docker swarm init --advertise-addr $(ADVERTISE_ADDR)
	TAG=$(TAG) API_PASSWORD_SECRET=$(API_PASSWORD_SECRET) API_USERS_SECRET=$(API_USERS_SECRET) TLS_SECRET=$(TLS_SECRET) \
	    $(if $(REPO),REPO=$(abspath $(REPO))) $(if $(S3_REPOSITORY),S3_CREDENTIALS=$(abspath $(S3_CREDENTIALS))) \
	    docker stack deploy --resolve-image never --detach=false -c docker-stack.yml \
	    $(if $(REPO),-c deploy/repository-stack.yml) $(if $(S3_REPOSITORY),-c deploy/s3-stack.yml) $(STACK)

stack-down:
	docker stack rm $(STACK)

# make s3-stack: an S3 server for the model repository on Swarm, a stack of its own (deploy/s3-server-stack.yml);
# publish into it (make publish REPO=s3://models/ S3=http://127.0.0.1:8333), then make stack S3_REPOSITORY=1.
S3_STACK ?= tabserve-s3

s3-stack: $(S3_CREDENTIALS)  # build tabserve-s3 and deploy it; return once it is healthy
	[ "$$(docker info --format '{{.Swarm.LocalNodeState}}')" = active ] || \
	    docker swarm init --advertise-addr $(ADVERTISE_ADDR)
	docker build -f Dockerfile.s3 -t tabserve-s3:$(TAG) .
	TAG=$(TAG) S3_CREDENTIALS=$(abspath $(S3_CREDENTIALS)) docker stack deploy --resolve-image never \
	    --detach=false -c deploy/s3-server-stack.yml $(S3_STACK)

s3-stack-down:
	docker stack rm $(S3_STACK)

clean:
	rm -rf $(VENV) .venv-checkov .venv-protoc .pytest_cache __pycache__ */__pycache__
