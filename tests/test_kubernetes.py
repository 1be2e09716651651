"""deploy/kubernetes, proven without a cluster (none can run here): the schemas of the oldest and newest Kubernetes
the manifests claim (kubernetes-validate, strict), as written and as `kubectl apply -k` renders them, and what a
schema cannot check: labels that select, ports, users and variables that agree with the images and the README, and
probe paths that the real services answer."""

import copy
import re
import shutil
import subprocess
import urllib.request

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tabserve import server
from tests.support import ROOT, require, web_server

KUSTOMIZATION = ROOT / "deploy" / "kubernetes"
REPOSITORY_OVERLAY = ROOT / "deploy" / "kubernetes-repository"  # the base, serving a model repository
S3_OVERLAY = ROOT / "deploy" / "kubernetes-s3"  # the base, serving a model repository in S3
VERSIONS = ("1.25.0", "1.37.0")  # the oldest and the newest kubernetes-validate knows, and what the README claims
CLUSTER_SCOPED = {"Namespace"}
IMAGES = {"tabserve-api": "Dockerfile.api", "tabserve-web": "Dockerfile.web"}


def load(path):
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def render():
    """What `kubectl apply -k deploy/kubernetes` sends, for the kustomize fields the kustomization uses: the
    resources, the namespace, labels (metadata only) and image names."""
    kustomization = yaml.safe_load((KUSTOMIZATION / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
    images = {image["name"]: f"{image['newName']}:{image['newTag']}" for image in kustomization["images"]}
    rendered = []
    for document in (d for resource in kustomization["resources"] for d in load(KUSTOMIZATION / resource)):
        document = copy.deepcopy(document)
        if document["kind"] not in CLUSTER_SCOPED:
            document["metadata"]["namespace"] = kustomization["namespace"]
        for pairs in kustomization["labels"]:
            document["metadata"].setdefault("labels", {}).update(pairs["pairs"])
        for container in containers_of(document):  # kustomize matches the image's name, whatever its tag
            container["image"] = images.get(container["image"].split(":")[0], container["image"])
        rendered.append(document)
    return rendered


def json_patch(document, operations):
    """RFC 6902 "add" operations, as kustomize applies them: /-/ appends to a list, a number indexes one."""
    for operation in operations:
        assert operation["op"] == "add"
        *parents, last = operation["path"].strip("/").split("/")
        target = document
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if last == "-":
            target.append(copy.deepcopy(operation["value"]))
        else:
            target[last] = copy.deepcopy(operation["value"])
    return document


def render_overlay(base, folder=REPOSITORY_OVERLAY):
    """What `kubectl apply -k deploy/kubernetes-repository` (or another overlay of the base) sends: the base with the
    overlay's resources and patches."""
    overlay = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(overlay) <= {"apiVersion", "kind", "namespace", "labels", "resources", "patches"}
    assert overlay["resources"][0] == "../kubernetes" and overlay["namespace"] == "tabserve"
    rendered = copy.deepcopy(base)
    for resource in overlay["resources"][1:]:
        rendered += [{**document, "metadata": {**document["metadata"], "namespace": overlay["namespace"]}}
                     for document in load(folder / resource)]
    for document in rendered:
        for pairs in overlay["labels"]:
            document["metadata"].setdefault("labels", {}).update(pairs["pairs"])
        for patch in overlay["patches"]:
            if (document["kind"], document["metadata"]["name"]) == (patch["target"]["kind"], patch["target"]["name"]):
                json_patch(document, load(folder / patch["path"])[0])
    return rendered


def containers_of(document):
    return document["spec"]["template"]["spec"]["containers"] if document["kind"] == "Deployment" else []


def of_kind(documents, kind):
    return [document for document in documents if document["kind"] == kind]


def selects(selector, labels):
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


@pytest.fixture(scope="module")
def manifests():
    return render()


@pytest.fixture(scope="module")
def deployments(manifests):
    return {document["metadata"]["name"]: document for document in of_kind(manifests, "Deployment")}


# --- The schemas -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_file_is_valid_for_the_kubernetes_it_claims(version):
    for path in sorted(KUSTOMIZATION.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in load(path):
            kubernetes_validate.validate(document, version, strict=True)  # raises on any error


@pytest.mark.parametrize("version", VERSIONS)
def test_the_rendered_kustomization_is_valid(manifests, version):
    assert {document["kind"] for document in manifests} == {
        "Namespace", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy",
        "Ingress"}
    for document in manifests:
        kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_model_repository_overlay_is_valid_and_mounts_one_volume_read_only(manifests, version):
    rendered = render_overlay(manifests)
    for document in rendered:
        kubernetes_validate.validate(document, version, strict=True)
    claim = of_kind(rendered, "PersistentVolumeClaim")[0]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # read by every pod, written by a publisher
    pod = next(d for d in of_kind(rendered, "Deployment") if d["metadata"]["name"] == "tabserve-api")["spec"][
        "template"]["spec"]
    volume = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    env = {item["name"]: item["value"] for item in container["env"]}
    assert mount["readOnly"] is True and env["MODEL_REPOSITORY"] == mount["mountPath"]
    assert env["MODEL_PATH"] == ""  # the image's own model is not served (both set is refused)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_s3_overlay_reads_the_bucket_with_keys_from_a_secret_file(manifests, version):
    rendered = render_overlay(manifests, S3_OVERLAY)
    for document in rendered:
        kubernetes_validate.validate(document, version, strict=True)
    kubernetes_validate.validate(load(S3_OVERLAY / "s3-secret.example.yaml")[0], version, strict=True)
    pod = next(d for d in of_kind(rendered, "Deployment") if d["metadata"]["name"] == "tabserve-api")["spec"][
        "template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["MODEL_REPOSITORY"].startswith("s3://") and env["MODEL_PATH"] == ""
    secret = next(v for v in pod["volumes"] if "secret" in v and v["secret"]["secretName"] == "tabserve-s3")
    mount = next(m for m in container["volumeMounts"] if m["name"] == secret["name"])
    assert mount["readOnly"] and env["AWS_SHARED_CREDENTIALS_FILE"].startswith(mount["mountPath"] + "/")
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)  # keys as a file, never as variables
    assert not of_kind(rendered, "PersistentVolumeClaim")  # no shared volume
    documented = set(re.findall(r"^\| `([A-Z_]+)`", (ROOT / "docs" / "configuration.md").read_text(), re.M))
    assert set(env) <= documented, set(env) - documented


@pytest.mark.parametrize("overlay", [REPOSITORY_OVERLAY, S3_OVERLAY], ids=lambda folder: folder.name)
def test_the_overlay_renders_as_kubectl_renders_it(manifests, overlay):
    """The emulation above beside kustomize itself, where kubectl is installed."""
    require(shutil.which("kubectl"), "kubectl is not installed: the overlay is checked by the emulation only")
    rendered = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True,
                              check=True).stdout

    def key(document):
        return document["kind"], document["metadata"]["name"]

    ours = {key(d): d for d in render_overlay(manifests, overlay)}
    theirs = {key(d): d for d in yaml.safe_load_all(rendered)}
    assert set(ours) == set(theirs)
    for name, document in ours.items():
        assert document == theirs[name], name


def test_strict_validation_catches_a_misspelt_field(deployments):
    wrong = copy.deepcopy(deployments["tabserve-api"])
    wrong["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, VERSIONS[-1], strict=True)


def test_no_credential_is_in_what_is_applied(manifests):
    assert of_kind(manifests, "Secret") == []
    example = load(KUSTOMIZATION / "secret.example.yaml")[0]
    assert example["stringData"]["password"] == "CHANGE-ME"


# --- What a schema cannot check --------------------------------------------------------------------------------


def test_selectors_select_the_pods_they_mean(manifests, deployments):
    pods = {name: deployment["spec"]["template"]["metadata"]["labels"] for name, deployment in deployments.items()}
    for name, deployment in deployments.items():
        assert selects(deployment["spec"]["selector"]["matchLabels"], pods[name])
        for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
            assert selects(constraint["labelSelector"]["matchLabels"], pods[name])
    for document in of_kind(manifests, "Service") + of_kind(manifests, "PodDisruptionBudget"):
        selector = document["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert [name for name, labels in pods.items() if selects(selector, labels)] == [document["metadata"]["name"]]
    policy = of_kind(manifests, "NetworkPolicy")[0]["spec"]
    assert [name for name, labels in pods.items() if selects(policy["podSelector"]["matchLabels"], labels)] == \
        ["tabserve-api"]
    allowed = [peer["podSelector"]["matchLabels"] for peer in policy["ingress"][0]["from"] if "podSelector" in peer]
    assert [name for name, labels in pods.items() if any(selects(s, labels) for s in allowed)] == ["tabserve-web"]


def test_services_ingress_and_autoscaler_point_at_what_exists(manifests, deployments):
    services = {document["metadata"]["name"]: document for document in of_kind(manifests, "Service")}
    for service in services.values():
        pod_ports = {port["name"] for port in containers_of(deployments[service["metadata"]["name"]])[0]["ports"]}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= pod_ports
    for rule in of_kind(manifests, "Ingress")[0]["spec"]["rules"]:
        backend = rule["http"]["paths"][0]["backend"]["service"]
        assert backend["port"]["name"] in {port["name"] for port in services[backend["name"]]["spec"]["ports"]}
    autoscaler = of_kind(manifests, "HorizontalPodAutoscaler")[0]["spec"]
    assert autoscaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tabserve-api"}
    assert autoscaler["minReplicas"] == deployments["tabserve-api"]["spec"]["replicas"] == 3
    assert deployments["tabserve-api"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_web_calls_the_api_through_its_service(deployments):
    env = {item["name"]: item.get("value") for item in containers_of(deployments["tabserve-web"])[0]["env"]}
    assert env["API_URL"] == "http://tabserve-api:8000"


def dockerfile_says(dockerfile, pattern):
    return re.findall(pattern, (ROOT / dockerfile).read_text(), re.M)


@pytest.mark.parametrize("name", ["tabserve-api", "tabserve-web"])
def test_ports_and_user_are_the_images(deployments, name):
    dockerfile = IMAGES[name]
    pod = deployments[name]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert [port["containerPort"] for port in container["ports"]] == [
        int(port) for line in dockerfile_says(dockerfile, r"^EXPOSE (.+)$") for port in line.split()]
    assert dockerfile_says(dockerfile, r"^USER (\d+)$") == [str(pod["securityContext"]["runAsUser"])]
    assert dockerfile_says(dockerfile, r"useradd --uid (\d+)") == [str(pod["securityContext"]["runAsUser"])]


@pytest.mark.parametrize("name", ["tabserve-api", "tabserve-web"])
def test_the_restricted_pod_security_standard_is_met(manifests, deployments, name):
    namespace = of_kind(manifests, "Namespace")[0]["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = deployments[name]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}}
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
        assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("name", ["tabserve-api", "tabserve-web"])
def test_a_pod_stops_within_its_grace_period(deployments, name):
    pod = deployments[name]["spec"]["template"]["spec"]
    pause = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > server.GRACEFUL_TIMEOUT + pause


def test_credentials_come_from_the_secret_as_files_never_as_variables(deployments):
    """The API reads its users file, the web pods their password, each from the Secret mounted as a file."""
    secret = load(KUSTOMIZATION / "secret.example.yaml")[0]
    for name, variable in (("tabserve-api", "API_USERS_FILE"), ("tabserve-web", "API_PASSWORD_FILE")):
        pod = deployments[name]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {item["name"]: item for item in container["env"]}
        assert not any("valueFrom" in item for item in env.values()) and "API_PASSWORD" not in env
        volume = next(v for v in pod["volumes"] if "secret" in v)
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        assert mount["readOnly"] is True
        assert env[variable]["value"] == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
        assert volume["secret"]["items"][0]["key"] in secret["stringData"]
    web_user = {item["name"]: item for item in deployments["tabserve-web"]["spec"]["template"]["spec"]["containers"][0]
                ["env"]}["API_USERNAME"]["value"]
    assert secret["stringData"]["users"].startswith(f"{web_user}:scrypt$")  # the web pods are one of the users


def test_images_are_named_by_an_explicit_tag(deployments):
    for deployment in deployments.values():
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert ":" in image and not image.endswith(":latest"), image


def test_every_environment_variable_is_one_the_configuration_table_documents(deployments):
    readme = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)`", readme, re.M))
    named = {item["name"] for deployment in deployments.values()
             for container in containers_of(deployment) for item in container["env"]}
    assert named and named <= documented, named - documented


def probes(deployment):
    container = containers_of(deployment)[0]
    return [container[probe] for probe in ("startupProbe", "readinessProbe", "livenessProbe")]


def test_every_probe_path_answers_200_from_the_services_as_the_images_serve_them(deployments, served_api):
    """An HTTP probe's path answers 200; a gRPC probe asks the image's gRPC port (GRPC_PORT in Dockerfile.api),
    whose health service answers SERVING without credentials."""
    grpc_port = int(re.search(r"GRPC_PORT=([0-9]+)", (ROOT / "Dockerfile.api").read_text()).group(1))
    web = web_server(served_api.url)
    try:
        for name, server in (("tabserve-api", served_api), ("tabserve-web", web)):
            for probe in probes(deployments[name]):
                if "grpc" in probe:
                    assert name == "tabserve-api" and probe["grpc"]["port"] == grpc_port
                    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                    assert answer.status == health_pb2.HealthCheckResponse.SERVING
                    continue
                with urllib.request.urlopen(server.url + probe["httpGet"]["path"], timeout=10) as response:
                    assert response.status == 200, (name, probe)
    finally:
        web.stop()
