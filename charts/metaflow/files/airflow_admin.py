# Run by the mfhelm chart's airflow-admin hook, in the Airflow image, after
# the Airflow chart's migration Job. Creates Airflow's admin account, or
# resets its password, from the Secret mfhelm generated: the password comes
# from the environment, never from argv, values or a log line.
import os
import sys


def main() -> int:
    username = os.environ["MFHELM_AIRFLOW_ADMIN_USER"]
    password = os.environ["MFHELM_AIRFLOW_ADMIN_PASSWORD"]
    if len(password) < 16:
        print("the admin password in the Secret is shorter than 16 characters", file=sys.stderr)
        return 1
    # What `airflow users create` uses (FAB auth manager, Airflow 2.9+).
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        role = sm.find_role("Admin")
        if role is None:
            print("Airflow has no Admin role; are its migrations done?", file=sys.stderr)
            return 1
        user = sm.find_user(username=username)
        if user is None:
            created = sm.add_user(username, "Airflow", "Admin", f"{username}@localhost",
                                  role, password)
            if not created:
                print(f"could not create Airflow user {username}", file=sys.stderr)
                return 1
            print(f"created Airflow user {username}")
        else:
            if role not in user.roles:
                user.roles.append(role)
                sm.update_user(user)
            sm.reset_password(user.id, password)
            print(f"Airflow user {username}: password set from its Secret")
    return 0


if __name__ == "__main__":
    sys.exit(main())
