// Who may do what, in one place: the function's system identity gets exactly the data-plane roles the
// Functions host and itsmc need, and the person or pipeline running deploy.sh gets what it needs to finish
// the deployment (store the connection's secrets; upload a Linux Consumption package).
//
// A module of its own because a role assignment's name must be known when the deployment starts, and the
// function's principal id is known only once the app exists: here it is a parameter.

@description('The function app\'s system-assigned identity.')
param principalId string

param storageAccountName string
param keyVaultName string
param dcrName string

@description('The function may write secrets (OAuth refresh tokens) back to the vault.')
param functionWritesSecrets bool

@description('Object id of whoever runs deploy.sh; empty: no grant. A user or a service principal, so no principalType is given (Azure looks it up).')
param deployerObjectId string

@description('The deployer uploads the package to blob storage (Linux Consumption).')
param deployerUploadsPackages bool

// Built-in role definition ids (the same in every tenant).
var roleIds = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

// The host keeps its keys and the timer's lock in blobs (Owner: it also sets blob leases and, on Flex, reads
// the deployed package) and uses queues; itsmc keeps its state in tables.
var functionStorageRoles = [
  roleIds.storageBlobDataOwner
  roleIds.storageQueueDataContributor
  roleIds.storageTableDataContributor
]

resource storage 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: storageAccountName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource dcr 'Microsoft.Insights/dataCollectionRules@2023-03-11' existing = {
  name: dcrName
}

resource functionStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for roleId in functionStorageRoles: {
  name: guid(storage.id, principalId, roleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}]

resource functionSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, roleIds.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource functionSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (functionWritesSecrets) {
  name: guid(vault.id, principalId, roleIds.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsOfficer)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The Logs Ingestion API takes tokens whose identity may publish to this rule.
resource functionIngestion 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dcr.id, principalId, roleIds.monitoringMetricsPublisher)
  scope: dcr
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource deployerSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerObjectId)) {
  name: guid(vault.id, deployerObjectId, roleIds.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsOfficer)
    principalId: deployerObjectId
  }
}

resource deployerPackageUpload 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerObjectId) && deployerUploadsPackages) {
  name: guid(storage.id, deployerObjectId, roleIds.storageBlobDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataContributor)
    principalId: deployerObjectId
  }
}
