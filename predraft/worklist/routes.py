"""The worklist's routes: thin handlers that check the session, the role and the CSRF token, call a service,
and render a template (or redirect, Post/Redirect/Get).

Route                                          who            what
=============================================  =============  =====================================================
``GET /login``, ``POST /login``                anyone         the login form; a session cookie on success
``POST /logout``                               logged in      ends the session
``GET /``                                      logged in      the worklist (filters, search, sort, pages)
``GET /worklist/rows``                         logged in      rows, banner (HTML) and count as JSON, polled
``GET /studies/{uid}``                         logged in      the study page: hips, draft, review, history
``GET /studies/{uid}/hips/{id}/{side}.png``    logged in      a hip's thumbnail
``GET /studies/{uid}/hips/{id}/{side}/gradcam.png``  logged in  its Grad-CAM overlay (``?class=``)
``POST /studies/{uid}/review``                 radiologist    accept, save edits and accept, or reject
``GET /stats``                                 admin          drafts per day, review rates, time to draft
``GET /viewer/...``                            logged in      the OHIF Viewer, when one is configured (``viewer``)
=============================================  =============  =====================================================
"""

from __future__ import annotations

import logging
import math
import secrets
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from predraft.core.db import session_scope
from predraft.core.metrics import REVIEWS
from predraft.core.schema import Instance, Study, User
from predraft.core.states import Role
from predraft.listener.spool import Spool
from predraft.models.pack import DEFAULT_PACK
from predraft.worklist import auth
from predraft.worklist.auth import CSRF_FIELD, LOGIN_COOKIE, SESSION_COOKIE, CurrentUser, LoginRequired, WebError
from predraft.worklist.context import WebContext
from predraft.worklist.images import ImageUnavailable
from predraft.worklist.present import WorklistState
from predraft.worklist.stats import statistics
from predraft.worklist.study import study_page
from predraft.worklist.users import authenticate
from predraft.worklist.viewer import viewer_link
from predraft.worklist.worklist import SORTS, QueryError, WorklistQuery, worklist_page

log = logging.getLogger(__name__)
router = APIRouter()


def web(request: Request) -> WebContext:
    return request.app.state.web


def _set_cookie(response: Response, context: WebContext, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=context.settings.worklist.cookie_secure,
        httponly=True,
        samesite="lax",
    )


def current_user(request: Request) -> CurrentUser:
    """The logged-in user (a dependency of every page): LoginRequired without a valid session."""
    context = web(request)
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise LoginRequired()
    with session_scope(context.settings.database_url) as session:
        user = auth.user_for_token(session, secret=context.secret, token=token)
        if user is None:
            raise LoginRequired()
        found = CurrentUser(
            user.id, user.username, user.display_name, Role(user.role), auth.csrf_token(context.secret, token)
        )
    request.state.user = found
    return found


def admin(user: CurrentUser = Depends(current_user)) -> CurrentUser:
    if not user.is_admin:
        raise WebError(HTTPStatus.FORBIDDEN, "this page is for admins")
    return user


async def checked_form(request: Request, user: CurrentUser = Depends(current_user)) -> dict[str, str]:
    """The posted form, once its CSRF token matches the session's (403 otherwise)."""
    form = await auth.read_form(request)
    if not auth.csrf_ok(web(request).secret, request.cookies.get(SESSION_COOKIE), form.get(CSRF_FIELD)):
        raise WebError(HTTPStatus.FORBIDDEN, "the form's security token is missing or stale: reload the page")
    return form


def _safe_next(target: str | None) -> str:
    """Only a path of this site (no scheme, no host, no ``//``) may be returned to after login."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(char) < 32 for char in target)
    ):
        return "/"
    return target


# --- login and logout ------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:  # noqa: A002 - the query parameter's name
    context = web(request)
    seed = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = context.render(
        "login.html.j2", user=None, next=_safe_next(next), error=None, csrf_token=auth.csrf_token(context.secret, seed)
    )
    _set_cookie(response, context, LOGIN_COOKIE, seed, max_age=3600)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    context = web(request)
    form = await auth.read_form(request)
    seed = request.cookies.get(LOGIN_COOKIE)
    if not auth.csrf_ok(context.secret, seed, form.get(CSRF_FIELD)):
        raise WebError(HTTPStatus.FORBIDDEN, "the login form's security token is missing or stale: reload the page")
    target = _safe_next(form.get("next"))
    username, address = form.get("username", ""), request.client.host if request.client else "unknown"

    def _login() -> tuple[str | None, int | None]:
        """(session token, None) on success; (None, seconds to wait) when throttled; (None, None) when wrong.
        Checked, tried and counted under the throttle's locks of this user name and address, so that
        parallel guesses cannot all pass the check before any of them is counted."""
        with context.throttle.attempt(username=username, address=address) as wait:
            if wait is not None:
                return None, wait
            with session_scope(context.settings.database_url) as session:
                user = authenticate(session, username=username, password=form.get("password", ""))
                if user is None:
                    context.throttle.failed(username=username, address=address)
                    return None, None
                token = auth.start_session(
                    session,
                    user=user,
                    secret=context.secret,
                    lifetime_minutes=context.settings.worklist.session_lifetime_minutes,
                )
            context.throttle.succeeded(username=username)
            return token, None

    token, wait = await run_in_threadpool(_login)
    if wait is not None:
        log.warning("login refused: too many failed logins for that user name or from %s; %d s to wait", address, wait)
        minutes = math.ceil(wait / 60)
        response: Response = context.render(
            "login.html.j2",
            status=HTTPStatus.TOO_MANY_REQUESTS,
            user=None,
            next=target,
            error=f"Too many failed logins. Try again in {minutes} minute{'s' if minutes > 1 else ''}.",
            csrf_token=auth.csrf_token(context.secret, seed or ""),
        )
        response.headers["Retry-After"] = str(wait)
        return response
    if token is None:
        log.info("failed login from %s", address)
        return context.render(
            "login.html.j2",
            status=HTTPStatus.UNAUTHORIZED,
            user=None,
            next=target,
            error="Wrong user name or password.",
            csrf_token=auth.csrf_token(context.secret, seed or ""),
        )
    response = RedirectResponse(target, status_code=HTTPStatus.SEE_OTHER)
    _set_cookie(
        response, context, SESSION_COOKIE, token, max_age=context.settings.worklist.session_lifetime_minutes * 60
    )
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.post("/logout")
async def logout(request: Request, _form: dict[str, str] = Depends(checked_form)) -> Response:
    context = web(request)
    token = request.cookies.get(SESSION_COOKIE, "")

    def _logout() -> None:
        with session_scope(context.settings.database_url) as session:
            auth.end_session(session, secret=context.secret, token=token)

    await run_in_threadpool(_logout)
    response = RedirectResponse("/login", status_code=HTTPStatus.SEE_OTHER)
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=context.settings.worklist.cookie_secure, httponly=True, samesite="lax"
    )
    return response


# --- the worklist ----------------------------------------------------------------------------------------


def _worklist(request: Request) -> Any:
    try:
        query = WorklistQuery.from_params(dict(request.query_params))
    except QueryError as exc:
        raise WebError(HTTPStatus.BAD_REQUEST, str(exc)) from exc
    with session_scope(web(request).settings.database_url) as session:
        return worklist_page(session, query)


def _models_shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(
        {
            (row["model"], row["synthetic_demo"]): {"name": row["model"], "synthetic_demo": row["synthetic_demo"]}
            for row in rows
            if row.get("model")
        }.values()
    )


@router.get("/", response_class=HTMLResponse)
def worklist(request: Request, user: CurrentUser = Depends(current_user)) -> Response:
    page = _worklist(request)
    return web(request).render(
        "worklist.html.j2",
        user=user,
        page=page,
        states=list(WorklistState),
        sorts=list(SORTS),
        models=_models_shown(page.rows),
    )


@router.get("/worklist/rows")
def worklist_rows(request: Request, user: CurrentUser = Depends(current_user)) -> Response:
    """What the worklist page polls: the rows and the draft banner as HTML (rendered and escaped here), and
    the count, as JSON."""
    context = web(request)
    page = _worklist(request)
    rows = context.templates.get_template("worklist_rows.html.j2").render(user=user, page=page)
    banner = context.templates.get_template("_banner.html.j2").render(models=_models_shown(page.rows))
    return JSONResponse(
        {"total": page.total, "pages": page.pages, "rows": rows, "banner": banner},
        headers={"Cache-Control": "no-store"},
    )


# --- a study -----------------------------------------------------------------------------------------------


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study(request: Request, study_uid: str, user: CurrentUser = Depends(current_user)) -> Response:
    with session_scope(web(request).settings.database_url) as session:
        detail = study_page(session, study_uid)
    if detail is None:
        raise WebError(HTTPStatus.NOT_FOUND, "no such study")
    done = request.query_params.get("done")  # set by the review's redirect: shown only if the study says so too
    review = detail.get("review")
    notice = f"Review recorded: {done}." if review is not None and review["action"] == done else None
    if done == "requested" and detail.get("requested_pack"):
        notice = f"Drafting requested with the {detail['requested_pack']} pack."
    packs = [(p.name, p.pack.title) for p in web(request).settings.model.packs().packs]
    viewer = viewer_link(study_uid) if web(request).settings.worklist.viewer_dir is not None else None
    return web(request).render("study.html.j2", user=user, study=detail, notice=notice, packs=packs, viewer=viewer)


def _instance(request: Request, study_uid: str, instance_id: int) -> Instance:
    with session_scope(web(request).settings.database_url) as session:
        instance = session.scalar(
            select(Instance)
            .join(Study, Study.id == Instance.study_id)
            .where(Instance.id == instance_id, Study.study_uid == study_uid)
        )
    if instance is None:
        raise WebError(HTTPStatus.NOT_FOUND, "no such image in this study")
    return instance


def _png(path: Any) -> FileResponse:
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


@router.get("/studies/{study_uid}/hips/{instance_id}/{side}.png")
def thumbnail(
    request: Request, study_uid: str, instance_id: int, side: str, _user: CurrentUser = Depends(current_user)
) -> Response:
    instance = _instance(request, study_uid, instance_id)
    try:
        return _png(
            web(request).images.thumbnail(
                spool_path=instance.spool_path, sop_instance_uid=instance.sop_instance_uid, side=side
            )
        )
    except ImageUnavailable as exc:
        raise WebError(HTTPStatus.NOT_FOUND, str(exc)) from exc


@router.get("/studies/{study_uid}/hips/{instance_id}/{side}/gradcam.png")
def gradcam(
    request: Request, study_uid: str, instance_id: int, side: str, _user: CurrentUser = Depends(current_user)
) -> Response:
    instance = _instance(request, study_uid, instance_id)
    hardware = request.query_params.get("class", "")
    try:
        return _png(
            web(request).images.overlay(
                spool_path=instance.spool_path,
                sop_instance_uid=instance.sop_instance_uid,
                side=side,
                hardware=hardware,
                pack=instance.pack or DEFAULT_PACK,
            )
        )
    except ImageUnavailable as exc:
        raise WebError(HTTPStatus.NOT_FOUND, str(exc)) from exc


@router.post("/studies/{study_uid}/review")
async def review(
    request: Request,
    study_uid: str,
    user: CurrentUser = Depends(current_user),
    form: dict[str, str] = Depends(checked_form),
) -> Response:
    # `predraft web` (and `predraft serve`, which waits for it) imports this module at start-up: Celery, kombu,
    # pynetdicom and highdicom load with the first review, and a web app that only shows worklists never loads them
    from predraft.workers.export_task import send_exports  # here, not at the top: Celery, highdicom (see above)
    from predraft.worklist.review import ReviewConflict, ReviewError, review_draft

    if not user.can_review:
        raise WebError(HTTPStatus.FORBIDDEN, "only radiologists review drafts")
    context = web(request)
    settings = context.settings
    try:
        draft_id = int(form.get("draft_id", ""))
    except ValueError as exc:
        raise WebError(HTTPStatus.BAD_REQUEST, "the form names no draft") from exc

    def _review() -> Any:
        with session_scope(settings.database_url) as session:
            reviewer = session.get_one(User, user.id)
            return review_draft(
                session,
                study_uid=study_uid,
                draft_id=draft_id,
                user=reviewer,
                action=form.get("action", ""),
                text=form.get("text"),
                reason=form.get("reason", ""),
                spool=Spool(settings.spool_dir),
                destinations=[d.name for d in settings.export.destinations],
                organization=settings.worklist.verifying_organization,
            )

    try:
        outcome = await run_in_threadpool(_review)
    except ReviewConflict as exc:
        raise WebError(HTTPStatus.CONFLICT, str(exc)) from exc
    except IntegrityError as exc:  # a concurrent review of the same draft won the race
        raise WebError(HTTPStatus.CONFLICT, "this draft was reviewed by someone else meanwhile") from exc
    except ReviewError as exc:
        raise WebError(HTTPStatus.BAD_REQUEST, str(exc)) from exc
    REVIEWS.labels(action=outcome.action.value).inc()
    if outcome.exports:  # committed: now the export tasks may run
        await run_in_threadpool(send_exports, context.celery(), outcome.report_id, outcome.exports)
    log.info("review %d: %s, SR %s", outcome.review_id, outcome.action.value, outcome.sr_sop_instance_uid)
    return RedirectResponse(f"/studies/{study_uid}?done={outcome.action.value}", status_code=HTTPStatus.SEE_OTHER)


@router.post("/studies/{study_uid}/draft-with")
async def draft_with(
    request: Request,
    study_uid: str,
    user: CurrentUser = Depends(current_user),
    form: dict[str, str] = Depends(checked_form),
) -> Response:
    """Draft a study anyway, with the pack a radiologist chose, when routing said out of scope
    (predraft.workers.dispatch.redraft_study with ``pack``)."""
    from predraft.workers.dispatch import CannotRedraft, redraft_study  # here, not at the top: Celery (see review)

    if not user.can_review:
        raise WebError(HTTPStatus.FORBIDDEN, "only radiologists ask for drafts")
    context = web(request)
    pack = form.get("pack", "")
    installed = {installed.name for installed in context.settings.model.packs().packs}
    if pack not in installed:
        raise WebError(HTTPStatus.BAD_REQUEST, f"no installed pack is named {pack!r}")
    try:
        generation = await run_in_threadpool(
            redraft_study, context.celery(), context.settings.database_url, study_uid=study_uid, pack=pack
        )
    except CannotRedraft as exc:
        raise WebError(HTTPStatus.CONFLICT, str(exc)) from exc
    log.info("study drafted anyway with the %s pack at a radiologist's request (generation %d)", pack, generation)
    return RedirectResponse(f"/studies/{study_uid}?done=requested", status_code=HTTPStatus.SEE_OTHER)


# --- statistics ----------------------------------------------------------------------------------------------


@router.get("/stats", response_class=HTMLResponse)
def stats(request: Request, user: CurrentUser = Depends(admin)) -> Response:
    with session_scope(web(request).settings.database_url) as session:
        figures = statistics(session)
    return web(request).render("stats.html.j2", user=user, stats=figures)
