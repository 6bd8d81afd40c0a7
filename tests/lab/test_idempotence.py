"""A second run of the whole deploy changes nothing on any host (runs right after `deployed`)."""

from lab import results


def test_second_run_changes_nothing(deployed, lab_mode, pyinfra_run, main_deploy_file):
    if lab_mode == "inventory":
        second = pyinfra_run(main_deploy_file, "--dry")
    else:
        second = pyinfra_run(main_deploy_file)
    assert second["returncode"] == 0 and not results.errors(second), results.summary(second)
    if lab_mode == "inventory":
        would = {op["name"]: op["hosts_with_change"] for op in second["plan"] if op.get("hosts_with_change")}
        assert not would, f"operations that would change a deployed cluster: {would}"
        return
    assert results.changed(second) == {}, "the second run changed things:\n" + results.summary(second)
