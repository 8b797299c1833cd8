-- Argo CD health check for msa.dev/MicroserviceApp (resource_customizations convention).
-- Without one Argo CD reports every custom resource Healthy, so a broken shop would show green.
-- Reads only what the operator publishes: metadata.generation, status.observedGeneration and
-- the Ready, Progressing and Degraded conditions (each with its own observedGeneration). Uses
-- only what Argo CD opens for a check given in argocd-cm (base and table).
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

-- A condition speaks of the current spec unless it names an older generation.
local function current(c)
  local generation = obj.metadata.generation
  return c.observedGeneration == nil or generation == nil or c.observedGeneration >= generation
end

local function said(c)
  return (c.reason or "") .. ": " .. (c.message or "")
end

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "the app is being deleted; its children go with it"
  return hs
end

local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "waiting for msa-operator to report the app's status"
  return hs
end

-- Degraded first: a refused spec (InvalidSpec, Forbidden, ApplyFailed) keeps
-- status.observedGeneration at the last generation applied, and must not read as progress.
local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" and current(degraded) then
  hs.status = "Degraded"
  hs.message = said(degraded)
  return hs
end

local progressing = condition("Progressing")
if progressing ~= nil and progressing.status == "True" and current(progressing) then
  -- The operator re-rendering pods itself (its upgrade, a changed cluster fact) waits for a
  -- slot while the app serves as it is: that is not the user's change progressing.
  if progressing.reason == "WaitingForRolloutSlot" and ready.status == "True" then
    hs.status = "Healthy"
    hs.message = (ready.message or "") .. "; queued: " .. said(progressing)
    return hs
  end
  hs.status = "Progressing"
  hs.message = said(progressing)
  return hs
end

local observed = obj.status.observedGeneration
if obj.metadata.generation ~= nil and (observed == nil or observed < obj.metadata.generation) then
  hs.status = "Progressing"
  hs.message = "msa-operator has not applied generation " .. obj.metadata.generation .. " yet"
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end

-- Not ready, and no rollout explains it.
hs.status = "Degraded"
hs.message = said(ready)
return hs
