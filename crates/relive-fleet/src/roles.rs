//! Least-privilege etcd roles for one application's fleet.
//!
//! | role | may |
//! | --- | --- |
//! | `<prefix>-operator` | read and write `configs/`, `canary/` and `rollout/`; read `instances/` |
//! | `<prefix>-instance` | read `canary/` and `configs/`; write `instances/` (any instance's status) |
//! | `<prefix>-instance-<id>` | read `canary/` and `configs/`; write `instances/<id>/` only |
//!
//! (`<prefix>` without its leading `/`.) The shared instance role lets an
//! instance write another's status; a role per instance id keeps each to
//! its own keys, and is what [`Fleet::add_instance`] creates.

use etcd_client::{Permission, UserAddOptions};
use serde::Serialize;

use crate::Error;
use crate::admin::Fleet;
use crate::layout::{Layout, check_instance_id};

/// What [`Fleet::create_roles`], [`Fleet::add_instance`] or
/// [`Fleet::add_operator`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RolesCreated {
    /// The roles created (or completed: their permissions granted again).
    pub roles: Vec<String>,
    /// The users created.
    pub users: Vec<String>,
    /// The users that existed already (their passwords are left alone).
    pub existing_users: Vec<String>,
}

impl Layout {
    /// The name of this fleet's role `kind` (`operator`, `instance`,
    /// `instance-web-1`): `shop-operator` under `/shop`.
    pub fn role_name(&self, kind: &str) -> String {
        format!("{}-{kind}", self.prefix().trim_start_matches('/'))
    }

    /// The permissions of this fleet's operator role.
    fn operator_permissions(&self) -> Vec<Permission> {
        let p = self.prefix();
        vec![
            Permission::read_write(self.configs_prefix()).with_prefix(),
            Permission::read_write(self.canary_prefix()).with_prefix(),
            Permission::read_write(format!("{p}/rollout/")).with_prefix(),
            Permission::read(self.instances_prefix()).with_prefix(),
        ]
    }

    /// The permissions of an instance role: read what instances watch,
    /// write under `status` (a prefix).
    fn instance_permissions(&self, status: String) -> Vec<Permission> {
        let (start, end) = self.source_range();
        vec![Permission::read(start).with_range_end(end), Permission::read_write(status).with_prefix()]
    }
}

impl Fleet {
    /// Creates this fleet's operator and shared instance roles, or grants
    /// their permissions again if they exist. Needs a user that may manage
    /// users and roles (etcd's `root`).
    pub async fn create_roles(&self) -> Result<RolesCreated, Error> {
        let layout = self.layout().clone();
        let mut done = RolesCreated::default();
        self.role(&mut done, &layout.role_name("operator"), layout.operator_permissions()).await?;
        self.role(&mut done, &layout.role_name("instance"), layout.instance_permissions(layout.instances_prefix()))
            .await?;
        Ok(done)
    }

    /// Creates the role and the user `<prefix>-instance-<id>`, which may
    /// read the configs and canaries and write only instance `id`'s status
    /// keys. Without a password the user signs in with a client
    /// certificate whose common name is the user's name.
    pub async fn add_instance(&self, id: &str, password: Option<&str>) -> Result<RolesCreated, Error> {
        check_instance_id(id)?;
        let layout = self.layout().clone();
        let name = layout.role_name(&format!("instance-{id}"));
        let mut done = RolesCreated::default();
        self.role(&mut done, &name, layout.instance_permissions(layout.instance_prefix(id)?)).await?;
        self.user(&mut done, &name, password, &name).await?;
        Ok(done)
    }

    /// Creates user `user` if it does not exist and grants it this fleet's
    /// operator role (created if missing). Without a password the user
    /// signs in with a client certificate whose common name is `user`.
    pub async fn add_operator(&self, user: &str, password: Option<&str>) -> Result<RolesCreated, Error> {
        let layout = self.layout().clone();
        let role = layout.role_name("operator");
        let mut done = RolesCreated::default();
        self.role(&mut done, &role, layout.operator_permissions()).await?;
        self.user(&mut done, user, password, &role).await?;
        Ok(done)
    }

    async fn role(&self, done: &mut RolesCreated, name: &str, permissions: Vec<Permission>) -> Result<(), Error> {
        let mut client = self.client().clone();
        match self.bounded(client.role_add(name)).await {
            Ok(_) => {}
            Err(e) if e.contains("role name already exists") => {}
            Err(e) => return Err(self.failed(format!("add role {name}"), e)),
        }
        for permission in permissions {
            self.bounded(client.role_grant_permission(name, permission))
                .await
                .map_err(|e| self.failed(format!("grant permissions to role {name}"), e))?;
        }
        done.roles.push(name.to_string());
        Ok(())
    }

    async fn user(&self, done: &mut RolesCreated, name: &str, password: Option<&str>, role: &str) -> Result<(), Error> {
        let mut client = self.client().clone();
        let options = password.is_none().then(|| UserAddOptions::new().with_no_pwd());
        match self.bounded(client.user_add(name, password.unwrap_or(""), options)).await {
            Ok(_) => done.users.push(name.to_string()),
            Err(e) if e.contains("user name already exists") => done.existing_users.push(name.to_string()),
            Err(e) => return Err(self.failed(format!("add user {name}"), e)),
        }
        self.bounded(client.user_grant_role(name, role))
            .await
            .map_err(|e| self.failed(format!("grant role {role} to user {name}"), e))?;
        Ok(())
    }
}
