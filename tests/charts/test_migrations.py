"""Migrations run before the pods roll: as Helm hooks (with their own copies of the
settings, since a pre-install hook runs before the release's objects exist) or as a plain
Job per revision; and no service pod starts on a schema older than its image's."""

from __future__ import annotations

from tests.charts.support import CHART_DIR, RELEASE, Chart, Rendered, container, service_deployment

CI = CHART_DIR / "ci"
JOB = f"{RELEASE}-migrations"
HOOK = "helm.sh/hook"


def hooks(rendered: Rendered) -> dict[str, dict[str, str]]:
    """`Kind/name` -> annotations, of every hook object."""
    return {
        f"{m['kind']}/{m['metadata']['name']}": m["metadata"]["annotations"]
        for m in rendered.manifests
        if HOOK in m["metadata"].get("annotations", {})
    }


def test_the_job_migrates_the_control_plane_then_every_tenant(chart: Chart) -> None:
    job = chart.render().one("Job", JOB)

    assert container(job, "control-plane")["args"] == ["service", "migrate"]
    assert container(job, "tenants")["args"] == ["service", "migrate", "--all-tenants"]
    assert job["spec"]["backoffLimit"] == 3
    assert job["spec"]["activeDeadlineSeconds"] == 600
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_as_hooks_the_job_and_its_settings_run_before_install_and_upgrade(chart: Chart) -> None:
    rendered = chart.render()
    found = hooks(rendered)

    assert set(found) == {
        f"ConfigMap/{JOB}", f"Secret/{JOB}", f"Job/{JOB}", f"Pod/{RELEASE}-test-readiness",
    }  # fmt: skip
    for name in (f"ConfigMap/{JOB}", f"Secret/{JOB}", f"Job/{JOB}"):
        assert found[name][HOOK] == "pre-install,pre-upgrade"
        assert found[name]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    # The settings exist before the Job that reads them.
    assert int(found[f"Secret/{JOB}"]["helm.sh/hook-weight"]) < int(
        found[f"Job/{JOB}"]["helm.sh/hook-weight"]
    )
    job = rendered.one("Job", JOB)
    env = rendered.environment(container(job, "control-plane"))
    api_env = rendered.environment(container(service_deployment(rendered), "api"))
    assert env == api_env  # the same settings, from the hook copies
    assert container(job, "tenants")["envFrom"] == [{"configMapRef": {"name": JOB}}]


def test_with_an_existing_secret_the_hook_job_reads_it_directly(chart: Chart) -> None:
    rendered = chart.render(CI / "existing-secret-values.yaml")

    assert f"Secret/{JOB}" not in hooks(rendered)
    refs = {
        item["valueFrom"]["secretKeyRef"]["name"]
        for item in container(rendered.one("Job", JOB), "tenants")["env"]
    }
    assert refs == {"berth-secrets"}


def test_without_hooks_the_job_is_plain_and_named_by_the_revision(chart: Chart) -> None:
    rendered = chart.render(CI / "no-hooks-values.yaml")

    (job,) = rendered.of_kind("Job")
    assert job["metadata"]["name"] == f"{JOB}-1"  # helm template renders revision 1
    assert "annotations" not in job["metadata"]
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    assert set(hooks(rendered)) == {f"Pod/{RELEASE}-test-readiness"}
    assert container(job, "tenants")["envFrom"] == [{"configMapRef": {"name": RELEASE}}]


def test_every_service_pod_waits_for_the_schema_of_its_image(chart: Chart) -> None:
    for values in ("default-values", "no-hooks-values"):
        rendered = chart.render(CI / f"{values}.yaml")
        deployment = service_deployment(rendered)
        wait = container(deployment, "wait-for-schema")

        assert wait["args"] == ["service", "migrate", "--check", "--wait", "600"]
        assert wait["image"] == container(deployment, "api")["image"]
        assert rendered.environment(wait) == rendered.environment(container(deployment, "api"))


def test_migrations_off_means_no_job_and_no_wait(chart: Chart) -> None:
    rendered = chart.render(settings={"migrations.enabled": "false"})

    assert rendered.of_kind("Job") == []
    assert "initContainers" not in service_deployment(rendered)["spec"]["template"]["spec"]
