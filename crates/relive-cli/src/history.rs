//! `relive history`, `show`, `diff` and `rollback`.

use crate::cli::{DiffArgs, HistoryArgs, RollbackArgs, ShowArgs};
use crate::exit::{Exit, Failure, Result};

/// `relive history NAME`.
pub async fn history(_args: HistoryArgs) -> Result<Exit> {
    Err(Failure::runtime("not yet"))
}

/// `relive show NAME [VERSION]`.
pub async fn show(_args: ShowArgs) -> Result<Exit> {
    Err(Failure::runtime("not yet"))
}

/// `relive diff NAME A [B]`.
pub async fn diff(_args: DiffArgs) -> Result<Exit> {
    Err(Failure::runtime("not yet"))
}

/// `relive rollback NAME [--to N]`.
pub async fn rollback(_args: RollbackArgs) -> Result<Exit> {
    Err(Failure::runtime("not yet"))
}
