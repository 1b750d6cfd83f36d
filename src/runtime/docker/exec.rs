//! A warm-pool run's process: an exec into a running container, attached,
//! and its exit code.

use super::*;

impl DockerRuntime {
    pub(super) fn exec_on_engine(
        &self,
        id: &str,
        spec: &ExecSpec,
    ) -> LocalBoxFuture<'static, Result<(String, Attached), RuntimeError>> {
        let (this, id, spec) = (self.clone(), id.to_owned(), spec.clone());
        async move {
            let client = this.ready_client().await?;
            let config = CreateExecOptions {
                attach_stdin: Some(spec.stdin),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                cmd: Some(spec.command.clone()),
                working_dir: spec.workdir.clone(),
                ..Default::default()
            };
            let exec_id = client.create_exec(&id, config).await.map_err(map_err)?.id;
            let started = client
                .start_exec(
                    &exec_id,
                    Some(StartExecOptions {
                        detach: false,
                        tty: false,
                        output_capacity: None,
                    }),
                )
                .await
                .map_err(map_err)?;
            match started {
                StartExecResults::Attached { output, input } => {
                    let input: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite>>> =
                        if spec.stdin { Some(input) } else { None };
                    Ok((
                        exec_id,
                        Attached {
                            output: chunks(output),
                            input,
                        },
                    ))
                }
                StartExecResults::Detached => {
                    Err(RuntimeError::Engine("the exec started detached".into()))
                }
            }
        }
        .boxed_local()
    }

    pub(super) fn exec_exit_on_engine(
        &self,
        exec_id: &str,
    ) -> LocalBoxFuture<'static, Result<Option<i64>, RuntimeError>> {
        let (this, exec_id) = (self.clone(), exec_id.to_owned());
        async move {
            let info = this
                .ready_client()
                .await?
                .inspect_exec(&exec_id)
                .await
                .map_err(map_err)?;
            Ok(if info.running == Some(true) {
                None
            } else {
                info.exit_code
            })
        }
        .boxed_local()
    }
}
