"""The documentation, proven: the runnable examples of README.md and docs/ (the blocks fenced ```sh test) run against
the services, every environment variable the code reads is in docs/configuration.md and every one there is read,
and every relative link resolves to a file and an anchor."""

import json
import re
import subprocess

import pytest

from tests.support import ROOT, api_server, web_server

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)( test)?\n(.*?)^```\n", re.M | re.S)
# Keys of the WSGI environ, which the code reads from each request, not from the process's environment.
WSGI_KEYS = {"PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH", "REQUEST_METHOD", "REMOTE_ADDR"}


def examples():
    """(document, the command, the block shown after it or "") of every runnable example."""
    found = []
    for document in DOCUMENTS:
        blocks = list(FENCE.finditer(document.read_text()))
        for index, block in enumerate(blocks):
            if block.group(2):
                answer = blocks[index + 1].group(3) if index + 1 < len(blocks) and not blocks[index + 1].group(2) \
                    else ""
                found.append(pytest.param(block.group(3), answer, id=f"{document.name}:{block.group(3)[:50]}"))
    return found


@pytest.fixture(scope="module")
def services(model_path):
    """The API and the web page as the images serve them, with the compose file's demo credentials."""
    credentials = {"API_USERNAME": "my_username", "API_PASSWORD": "my_password"}
    api = api_server(model_path, **credentials)
    web = web_server(api.url, **credentials)
    yield api, web
    web.stop()
    api.stop()


def keys_of(value):
    """Every key of every object in a JSON value."""
    if isinstance(value, dict):
        return set(value) | set().union(*map(keys_of, value.values()))
    if isinstance(value, list):
        return set().union(*map(keys_of, value)) if value else set()
    return set()


def test_there_are_runnable_examples_in_the_readme_and_the_api_page():
    documents = {param.id.split(":")[0] for param in examples()}
    assert {"README.md", "api.md"} <= documents


@pytest.mark.parametrize("command, shown", examples())
def test_each_runnable_example_answers_what_the_docs_show(services, command, shown):
    api, web = services
    command = command.replace("localhost:8000", f"127.0.0.1:{api.port}").replace("localhost:5000",
                                                                                  f"127.0.0.1:{web.port}")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    output = result.stdout
    status_shown = re.match(r"HTTP/1\.1 (\d{3})", shown)
    if status_shown:  # curl -i: the status line, then the headers, then the body
        assert output.startswith(f"HTTP/1.1 {status_shown.group(1)}"), output[:200]
        output = output.replace("\r\n", "\n").split("\n\n", 1)[1]  # text mode may have turned \r\n to \n
    if shown:
        answer = json.loads(output)
        shown_keys = set(re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)":', shown))
        assert shown_keys and shown_keys <= keys_of(answer), shown_keys - keys_of(answer)
        for key, value in re.findall(r'"(prediction|status|model_name|title)": ("[^"]*"|\d+)', shown):
            assert json.loads(value) in [item.get(key) for item in walk(answer) if isinstance(item, dict)], key


def walk(value):
    yield value
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        yield from walk(child)


# --- Configuration: one table, and the code -----------------------------------------------------------------------


def table_variables(section):
    """The variables named in the first column of a table of docs/configuration.md's section."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {name for row in re.findall(r"^\| ([^|]+) \|", part, re.M)
            for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row)}


def variables_read_by_the_code():
    names = set()
    for path in [*ROOT.glob("*.py"), *ROOT.glob("tabserve/*.py")]:
        text = path.read_text()
        names |= set(re.findall(r'environ(?:\.get)?[(\[]"([A-Z][A-Z0-9_]+)"', text))
        names |= set(re.findall(r'(?:positive_int|choice|fraction_of|seconds_of)\(environ, "([A-Z][A-Z0-9_]*)"', text))
        names |= set(re.findall(r'"(PROMETHEUS_MULTIPROC_DIR)"', text))
    return {name for name in names if name not in WSGI_KEYS and not name.startswith("HTTP_")}


def variables_of_the_deployment():
    names = set()
    overrides = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "deploy").glob("*.yml"))
    for path in ("docker-compose.yml", "docker-stack.yml", *overrides, "deploy/haproxy.cfg"):
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / path).read_text()))
    makefile = (ROOT / "Makefile").read_text()
    names |= set(re.findall(r"^([A-Z][A-Z0-9_]*) \?=", makefile, re.M))
    names |= set(re.findall(r"\$\(if \$\(([A-Z][A-Z0-9_]*)\)", makefile))
    names |= set(re.findall(r"--[a-z-]+ \$\(([A-Z][A-Z0-9_]*)\)", makefile))
    for command in re.findall(r"-m tabserve\.repository (.*)", makefile):  # make canary VERSION=2 PERCENT=10
        names |= set(re.findall(r"\$\(([A-Z][A-Z0-9_]*)\)", command))
    return names - variables_read_by_the_code()


def test_every_variable_the_services_read_is_in_the_table_and_every_one_there_is_read():
    assert table_variables("The services") == variables_read_by_the_code()


def test_every_deployment_variable_is_in_its_table_and_every_one_there_is_used():
    assert table_variables("Compose, Swarm and make") == variables_of_the_deployment()


def test_the_module_docstrings_point_to_the_table_instead_of_listing_variables():
    for name in ("api.py", "web.py", "serve.py"):
        docstring = (ROOT / name).read_text().split('"""')[1]
        assert "docs/configuration.md" in docstring, name
        assert not re.search(r"^    [A-Z_]{4,}\s{2,}", docstring, re.M), f"{name} lists variables again"


# --- Links --------------------------------------------------------------------------------------------------------


def anchors(path):
    """The anchors a code host makes of a Markdown file's headings."""
    text = FENCE.sub("", path.read_text())
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_resolves_to_a_file_and_an_anchor(document):
    text = FENCE.sub("", document.read_text())
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        assert path.exists(), f"{document.name}: {link}"
        if anchor:
            assert anchor in anchors(path), f"{document.name}: {link}"


def test_the_readme_is_a_ten_minute_read():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_every_doc_page_says_first_what_the_reader_will_be_able_to_do():
    for page in sorted((ROOT / "docs").glob("*.md")):
        first_paragraph = page.read_text().split("\n\n")[1]
        assert first_paragraph.startswith("After this page you"), page.name
